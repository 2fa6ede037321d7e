"""MLflow registry helpers, against a real (SQLite) MLflow store."""

from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from mlops import registry


def test_no_model_and_no_alias_read_as_no_champion(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert registry.storage_uri_of_alias(uri, "nope", registry.CHAMPION) is None
    registry.drop_alias(uri, "nope", registry.CHALLENGER)  # nothing to drop: no error


def test_an_unreachable_tracking_server_is_an_error_not_no_champion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(MlflowException):
        registry.storage_uri_of_alias("http://127.0.0.1:9", "breast-cancer", registry.CHAMPION)


def test_a_logged_and_registered_run_is_found_and_leaves_the_environment_alone(
    tmp_path: Path, tiny_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import joblib

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    joblib.dump(tiny_model[0], tmp_path / "model.joblib")
    run_id = registry.log_training_run(uri, "exp", {"C": 1.0}, {"f1": 0.9},
                                       tmp_path / "model.joblib", {"deploy": "True"})
    registry.register_version(uri, "m", run_id, 1, "/store/m/1")
    registry.move_alias(uri, "m", 1, registry.CHAMPION)
    assert registry.storage_uri_of_alias(uri, "m", registry.CHAMPION) == "/store/m/1"
    assert registry.version_of_run(uri, "m", run_id) == (1, "/store/m/1")
    assert (tmp_path / "mlartifacts").is_dir()  # beside the database, not ./mlruns
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_a_forest_is_logged_to_mlflow_trusting_only_scikit_learn_s_own_types(
    tmp_path: Path, breast_cancer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17: skops refused ``sklearn.tree._tree.Tree``; the store's file is untouched."""
    import joblib

    from mlops.store import sha256_file
    from mlops.training import fit_classifier

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    model = fit_classifier(breast_cancer, "target", "random_forest", {"n_estimators": 3}, 0)
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    before = sha256_file(path)
    assert "sklearn.tree._tree.Tree" in registry.skops_trusted_types(model)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = registry.log_training_run(uri, "exp", {}, {"f1": 0.9}, path, {})
    logged = next((tmp_path / "mlartifacts").rglob("MLmodel")).read_text()
    assert "serialization_format: skops" in logged and run_id
    assert sha256_file(path) == before


def test_a_model_holding_a_type_that_is_not_scikit_learn_s_is_not_trusted() -> None:
    from fractions import Fraction

    import numpy as np
    from sklearn.preprocessing import FunctionTransformer

    # Any object skops does not know would do: a transformer's argument here.
    model = FunctionTransformer(np.multiply, kw_args={"x2": Fraction(1, 2)})
    with pytest.raises(registry.UntrustedModelError, match=r"\(fractions.Fraction\): MLflow's"):
        registry.skops_trusted_types(model)
