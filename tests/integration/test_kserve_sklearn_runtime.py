"""KServe's sklearn runtime (kserve 0.20.0 from PyPI, its own venv) serving what the store holds.

The cluster's predictor is KServe's `kserve-sklearnserver` (`tests/integration/kserve_runtime`,
which follows kserve@v0.20.0:python/sklearnserver/sklearnserver/model.py and starts as
kserve@v0.20.0:config/runtimes/kserve-sklearnserver.yaml does). It loads a stored version's
``model.joblib`` (the version directory, as the storage initializer leaves it in /mnt/models:
`test_cluster_replay_storage.py` replays that download) and must answer a pandas-codec request
with the same predictions as `mlops serve`: an all-numeric model and a mixed-table model with
missing values and string labels (issue 17 item 3), with string labels as BYTES there too.

Its real answers are kept in tests/fixtures/kserve_sklearnserver/ (see the README there):
``MLOPS_RECORD_KSERVE_FIXTURES=1`` rewrites them; otherwise a test checks they are still what
the runtime answers.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.integration.kserve_runtime import Runtime, start_runtime
from tests.integration.serving_helpers import (
    NAME,
    ServerProcess,
    deploy,
    fit,
    publish,
    start_server,
)
from tests.integration.table_models import (
    LABEL,
    fit_mixed,
    mixed_table,
    pandas_request,
    publish_table,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "kserve_sklearnserver"
RECORD = os.environ.get("MLOPS_RECORD_KSERVE_FIXTURES") == "1"


@dataclass
class Served:
    """One stored version, served by `mlops serve` and by the runtime (labels, probabilities)."""

    model: Any
    features: pd.DataFrame
    local: ServerProcess
    labels: Runtime
    probabilities: Runtime

    def local_infer(self) -> str:
        return f"{self.local.url}/v2/models/{NAME}/infer"


def _serve(home: Path, version_dir: Path, model: Any, features: pd.DataFrame) -> Iterator[Served]:
    local = start_server(home, "--workers", "1")
    runtimes: list[Runtime] = []
    try:
        runtimes.append(start_runtime(version_dir, NAME, home))
        runtimes.append(start_runtime(version_dir, NAME, home, predict_proba=True))
        yield Served(model, features, local, *runtimes)
    finally:
        for runtime in runtimes:
            runtime.stop()
        local.stop()


@pytest.fixture(scope="module")
def numeric(
    tmp_path_factory: pytest.TempPathFactory, breast_cancer: pd.DataFrame
) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("runtime-numeric") / ".mlops"
    model = fit(breast_cancer, 1.0)
    version, uri = publish(home, model, breast_cancer, home.parent)
    deploy(home, version, uri)
    features = breast_cancer.drop(columns=["target"])
    yield from _serve(home, home / "store" / NAME / str(version), model, features)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("runtime-mixed") / ".mlops"
    frame = mixed_table()
    model = fit_mixed(frame)
    version, uri = publish_table(home / "store", NAME, model, frame, home.parent)
    deploy(home, version, uri)
    features = frame.drop(columns=[LABEL])
    yield from _serve(home, home / "store" / NAME / str(version), model, features)


def _output(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    return output


def test_the_runtime_answers_a_numeric_models_pandas_request_as_mlops_serve(
    numeric: Served,
) -> None:
    rows = numeric.features.iloc[::40]
    body = pandas_request(rows)
    runtime = _output(httpx.post(numeric.labels.infer_url(), json=body))
    local = _output(httpx.post(numeric.local_infer(), json=body))
    expected = numeric.model.predict(rows.to_numpy(dtype=float)).tolist()
    assert runtime["data"] == local["data"] == expected
    assert runtime["datatype"] == local["datatype"] == "INT64"
    assert runtime["shape"] == local["shape"] == [len(rows)]


def test_the_runtime_ignores_predict_proba_in_the_request_and_answers_labels(
    numeric: Served,
) -> None:
    rows = numeric.features.iloc[:3]
    answer = _output(
        httpx.post(numeric.labels.infer_url(), json=pandas_request(rows, predict_proba=True))
    )
    assert answer["shape"] == [3] and answer["datatype"] == "INT64"


def test_with_predict_proba_the_runtime_answers_probabilities_as_mlops_serve(
    numeric: Served,
) -> None:
    rows = numeric.features.iloc[::60]
    runtime = _output(httpx.post(numeric.probabilities.infer_url(), json=pandas_request(rows)))
    local = _output(
        httpx.post(numeric.local_infer(), json=pandas_request(rows, predict_proba=True))
    )
    assert runtime["datatype"] == local["datatype"] == "FP64"
    assert runtime["shape"] == local["shape"] == [len(rows), 2]
    np.testing.assert_allclose(runtime["data"], local["data"], rtol=1e-12)


def test_the_runtime_answers_the_mixed_table_as_mlops_serve_with_bytes_labels(
    mixed: Served,
) -> None:
    features = mixed.features
    assert features.isna().any().all()
    body = pandas_request(features)
    runtime = _output(httpx.post(mixed.labels.infer_url(), json=body))
    local = _output(httpx.post(mixed.local_infer(), json=body))
    expected = mixed.model.predict(features).tolist()
    assert runtime["data"] == local["data"] == expected
    assert runtime["datatype"] == local["datatype"] == "BYTES"
    assert set(expected) == {"high", "low", "mid"}


def test_the_runtime_answers_the_mixed_tables_probabilities_as_mlops_serve(mixed: Served) -> None:
    rows = mixed.features.iloc[::25]
    runtime = _output(httpx.post(mixed.probabilities.infer_url(), json=pandas_request(rows)))
    local = _output(httpx.post(mixed.local_infer(), json=pandas_request(rows, predict_proba=True)))
    assert runtime["shape"] == local["shape"] == [len(rows), 3]
    np.testing.assert_allclose(runtime["data"], local["data"], rtol=1e-12)


def test_a_missing_column_is_a_500_from_the_runtime_and_a_400_naming_it_here(mixed: Served) -> None:
    body = pandas_request(mixed.features.iloc[:2].drop(columns=["colour"]))
    runtime = httpx.post(mixed.labels.infer_url(), json=body)
    local = httpx.post(mixed.local_infer(), json=body)
    assert runtime.status_code == 500 and "colour" in runtime.json()["error"]
    assert local.status_code == 400 and "missing column 'colour'" in local.json()["error"]


# The requests whose answers are recorded: (file, runtime, request).
def _cases(numeric: Served, mixed: Served) -> list[tuple[str, Runtime, dict[str, Any]]]:
    first = numeric.features.iloc[:3]
    tensor = {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(first.shape),
                "datatype": "FP64",
                "data": first.to_numpy(dtype=float).ravel().tolist(),
            }
        ]
    }
    table = mixed.features.iloc[:4]
    return [
        ("numeric-labels-tensor", numeric.labels, tensor),
        ("numeric-labels-pandas", numeric.labels, pandas_request(first)),
        ("numeric-probabilities-pandas", numeric.probabilities, pandas_request(first)),
        ("mixed-labels-pandas", mixed.labels, pandas_request(table)),
        ("mixed-probabilities-pandas", mixed.probabilities, pandas_request(table)),
        ("mixed-missing-column", mixed.labels, pandas_request(table.drop(columns=["colour"]))),
    ]


def _same(recorded: Any, answered: Any) -> bool:
    if isinstance(recorded, float) and isinstance(answered, float):
        return math.isclose(recorded, answered, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(recorded, dict) and isinstance(answered, dict):
        return recorded.keys() == answered.keys() and all(
            _same(recorded[k], answered[k]) for k in recorded
        )
    if isinstance(recorded, list) and isinstance(answered, list):
        return len(recorded) == len(answered) and all(map(_same, recorded, answered))
    return bool(recorded == answered)


def test_the_recorded_bodies_are_what_the_runtime_answers(numeric: Served, mixed: Served) -> None:
    for case, runtime, request in _cases(numeric, mixed):
        response = httpx.post(runtime.infer_url(), json=request, headers={"x-request-id": case})
        body = response.json()
        path = FIXTURES / f"{case}.json"
        if RECORD:
            proba = (
                "true"
                if runtime is numeric.probabilities or runtime is mixed.probabilities
                else None
            )
            record = {
                "recorded_with": {
                    "runtime": "kserve==0.20.0, scikit-learn==1.5.2",
                    "server": "tests/integration/kserve_runtime/sklearnserver.py",
                    "env": {"PREDICT_PROBA": proba} if proba else {},
                    "path": f"/v2/models/{NAME}/infer",
                },
                "request": request,
                "status": response.status_code,
                "response": body,
            }
            path.write_text(json.dumps(record, indent=2) + "\n")
            continue
        recorded = json.loads(path.read_text())
        assert recorded["request"] == request, case
        assert response.status_code == recorded["status"], case
        if isinstance(body, dict) and "id" in body:
            body["id"], recorded["response"]["id"] = None, None  # a fresh uuid4 per answer
        assert _same(recorded["response"], body), (case, body)
