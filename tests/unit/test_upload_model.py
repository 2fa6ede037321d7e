"""A step run again for the same MLflow run publishes no second version (issue 8 item 13)."""

import json
from pathlib import Path

import joblib
from kfp.dsl import Artifact, Metrics, Model

from components.upload_model import upload_model
from mlops import registry
from mlops.store import LocalStore


def test_uploading_twice_for_one_run_publishes_one_version(tmp_path: Path, tiny_model) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model_file = tmp_path / "model.joblib"
    joblib.dump(tiny_model[0], model_file)
    run_id = registry.log_training_run(uri, "m", {}, {"f1": 0.9}, model_file, {})
    (tmp_path / "reference.json").write_text(json.dumps({"features": {}, "rows": 1}))
    arguments = {
        "model": Model(uri=str(model_file), metadata={"feature_names": ["a"], "params": {}}),
        "metrics": Metrics(uri=str(tmp_path / "metrics"), metadata={"f1": 0.9}),
        "reference": Artifact(uri=str(tmp_path / "reference.json")),
        "data_fingerprint": "f" * 64,
        "model_name": "m",
        "store_uri": str(tmp_path / "store"),
        "tracking_uri": uri,
        "mlflow_run_id": run_id,
    }
    first = upload_model.python_func(**arguments)
    again = upload_model.python_func(**arguments)
    assert tuple(again) == tuple(first) == (1, f"file://{tmp_path / 'store'}/m/1/")
    assert LocalStore(tmp_path / "store").versions("m") == [1]
