"""Fixtures shared by every test: the breast cancer table, a tiny fitted model, a clean state."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from mlops.data import load_table

# The S3-compatible test server (moto) as a fixture for any test that needs the S3 path.
pytest_plugins = ["tests.integration.s3_server"]


@pytest.fixture(scope="session", autouse=True)
def signing_key() -> Iterator[str]:
    """One model-signing key for the session, inherited by every server and step it starts.

    Tests publish in this process and load in `mlops serve` processes with another state
    directory; a shared key lets both agree without a key file in the developer's ``.mlops/``.
    Tests of the key file itself remove ``MLOPS_SIGNING_KEY`` with ``monkeypatch``.
    """
    with pytest.MonkeyPatch.context() as patch:
        key = "test-signing-key-" + "0123456789abcdef" * 2
        patch.setenv("MLOPS_SIGNING_KEY", key)
        yield key


@pytest.fixture(scope="session")
def breast_cancer() -> pd.DataFrame:
    """The built-in default dataset (569 rows, 30 numeric features, label ``target``)."""
    return load_table("sklearn:breast_cancer")


@pytest.fixture(scope="session")
def tiny_model(breast_cancer: pd.DataFrame):
    """``(model, rows)``: a logistic regression fitted once, and feature rows to predict."""
    from mlops.training import fit_classifier

    model = fit_classifier(breast_cancer, "target", "logistic_regression", {"max_iter": 500}, 0)
    rows = breast_cancer.drop(columns=["target"]).to_numpy(dtype=float)[:20]
    return model, rows


@pytest.fixture
def mlops_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private state directory: nothing a test does reaches the developer's ``.mlops/``."""
    home = tmp_path / ".mlops"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    for name in ("MLOPS_STORE_URI", "MLFLOW_TRACKING_URI", "MLOPS_S3_ENDPOINT", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    return home
