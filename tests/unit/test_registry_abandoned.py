"""A version a dead run published keeps MLflow's numbers in step with the store's (issue 19).

Against a real (SQLite) MLflow and a real local store.
"""

from pathlib import Path

from mlops import registry
from mlops.store import LocalStore


def _versions(uri: str) -> dict[int, dict[str, str]]:
    from mlflow import MlflowClient

    found = MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions("name='m'")
    return {int(v.version): dict(v.tags) for v in found}


def test_a_version_no_deploy_step_registered_is_registered_abandoned_then_adopted_by_its_run(
    tmp_path: Path,
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = LocalStore(tmp_path / "store")
    (tmp_path / "model.joblib").write_bytes(b"a model")
    for run in ("run-a", "run-died", "run-c"):
        store.publish("m", tmp_path / "model.joblib", {"sha256": "x", "mlflow_run_id": run})
    registry.register_version_once(uri, "m", "run-a", 1, store.version_uri("m", 1))
    # run-died stopped between its upload (version 2) and its deploy step; run-c deploys 3.
    registry.register_version_once(uri, "m", "run-c", 3, store.version_uri("m", 3))

    versions = _versions(uri)
    assert {n: int(t["store_version"]) for n, t in versions.items()} == {1: 1, 2: 2, 3: 3}
    assert versions[2]["abandoned"] == "published by run run-died, which was never deployed"
    assert "abandoned" not in versions[1] and "abandoned" not in versions[3]
    assert registry.version_of_run(uri, "m", "run-died") == (2, store.version_uri("m", 2))

    # Its own deploy step, retried after all, adopts it: no second registration.
    registry.register_version_once(uri, "m", "run-died", 2, store.version_uri("m", 2))
    versions = _versions(uri)
    assert len(versions) == 3 and "abandoned" not in versions[2]
