"""`mlops serve` loads a revision whose storageUri is s3:// (moto's S3 server, as MinIO would)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pandas as pd
import pytest

from mlops.store import open_store
from tests.integration.s3_server import S3Server
from tests.integration.serving_helpers import NAME, deploy, fit, publish, start_server, v2_body


def test_a_revision_on_s3_is_served_with_its_own_predictions(
    s3_server: S3Server,
    tmp_path: Path,
    breast_cancer: pd.DataFrame,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)  # read by the store here and by the server process
    model = fit(breast_cancer, 1.0)
    home = tmp_path / ".mlops"
    store = open_store(f"s3://models/serving-{os.getpid()}")
    version, uri = publish(home, model, breast_cancer, tmp_path, store=store)
    assert uri.startswith("s3://models/")
    deploy(home, version, uri)
    server = start_server(home)
    try:
        rows = breast_cancer.drop(columns=["target"]).to_numpy()[:20]
        response = httpx.post(f"{server.url}/v2/models/{NAME}/infer", json=v2_body(rows))
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["data"] == model.predict(rows).tolist()
    finally:
        server.stop()
