"""A step run again for the same MLflow run publishes no second version (issue 8 item 13)."""

import json
import subprocess
import sys
from pathlib import Path

import joblib
from kfp.dsl import Artifact, Metrics, Model

from components.upload_model import upload_model
from mlops import registry
from mlops.store import LocalStore

ROOT = Path(__file__).resolve().parents[2]


def _arguments(tmp_path: Path, model, run_id: str) -> dict:  # noqa: ANN001
    model_file = tmp_path / "model.joblib"
    joblib.dump(model, model_file)
    (tmp_path / "reference.json").write_text(json.dumps({"features": {}, "rows": 1}))
    return {
        "model": Model(uri=str(model_file), metadata={"feature_names": ["a"], "params": {}}),
        "metrics": Metrics(uri=str(tmp_path / "metrics"), metadata={"f1": 0.9}),
        "reference": Artifact(uri=str(tmp_path / "reference.json")),
        "data_fingerprint": "f" * 64,
        "model_name": "m",
        "store_uri": str(tmp_path / "store"),
        "mlflow_run_id": run_id,
    }


def test_uploading_twice_for_one_run_publishes_one_version(tmp_path: Path, tiny_model) -> None:
    arguments = _arguments(tmp_path, tiny_model[0], "run-a")
    first = upload_model.python_func(**arguments)
    again = upload_model.python_func(**arguments)
    other_run = upload_model.python_func(**{**arguments, "mlflow_run_id": "run-b"})
    assert tuple(again) == tuple(first) == (1, f"file://{tmp_path / 'store'}/m/1/")
    assert tuple(other_run)[0] == 2
    assert LocalStore(tmp_path / "store").versions("m") == [1, 2]


def test_an_unreadable_recent_version_does_not_stop_a_publish(
    tmp_path: Path, tiny_model
) -> None:
    arguments = _arguments(tmp_path, tiny_model[0], "run-a")
    upload_model.python_func(**arguments)
    (tmp_path / "store" / "m" / "1" / "metadata.json").write_text("{not json")
    assert tuple(upload_model.python_func(**{**arguments, "mlflow_run_id": "run-b"}))[0] == 2


def test_the_upload_step_runs_without_importing_mlflow(tmp_path: Path, tiny_model) -> None:
    # A step is a fresh interpreter: MLflow's import (seconds) is paid by deploy_model only.
    arguments = _arguments(tmp_path, tiny_model[0], "run-a")
    probe = f"""
import sys
from kfp.dsl import Artifact, Metrics, Model
from components.upload_model import upload_model
upload_model.python_func(
    model=Model(uri={str(tmp_path / "model.joblib")!r}, metadata={{"feature_names": ["a"]}}),
    metrics=Metrics(uri="m", metadata={{"f1": 0.9}}),
    reference=Artifact(uri={str(tmp_path / "reference.json")!r}),
    data_fingerprint="f" * 64, model_name="m", store_uri={arguments["store_uri"]!r},
    mlflow_run_id="run-a",
)
print(sorted(m for m in ("mlflow", "sklearn", "kserve") if m in sys.modules))
"""
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "MLOPS_HOME": str(tmp_path / ".mlops")},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.splitlines()[-1] == "[]"
    assert LocalStore(tmp_path / "store").versions("m") == [1]


def test_a_run_is_registered_once_however_often_its_deploy_runs(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for _ in range(2):
        registry.register_version_once(uri, "m", "run-a", 1, "file:///store/m/1/")
    from mlflow import MlflowClient

    versions = MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions("name='m'")
    assert [(v.run_id, v.tags["store_version"]) for v in versions] == [("run-a", "1")]
