"""MLflow tracking and registry: every run is logged, deployed versions carry aliases.

The registered model's versions are tagged with the store version and its ``storage_uri``;
the alias ``champion`` names the version that takes all production traffic, ``challenger``
the one in canary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHAMPION = "champion"
CHALLENGER = "challenger"
_STORE_VERSION_TAG = "store_version"
_STORAGE_URI_TAG = "storage_uri"


def _client(tracking_uri: str) -> Any:
    # Note: mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI to this process's
    # environment; one process works against one tracking store.
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def log_training_run(
    tracking_uri: str,
    experiment: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    model_path: Path,
    tags: dict[str, str],
) -> str:
    """Log one pipeline run (parameters, holdout metrics, the model) and return its run id."""
    import joblib
    import mlflow
    import sklearn

    client = _client(tracking_uri)
    if client.get_experiment_by_name(experiment) is None:
        client.create_experiment(experiment, artifact_location=_artifact_location(tracking_uri))
    mlflow.set_experiment(experiment)
    with mlflow.start_run(tags=tags) as run:
        mlflow.log_params({k: str(v) for k, v in params.items()})
        mlflow.log_metrics(metrics)
        # Explicit requirements: MLflow's inference of them imports the model in a subprocess.
        mlflow.sklearn.log_model(
            joblib.load(model_path),
            name="model",
            pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
        )
        return str(run.info.run_id)


def _artifact_location(tracking_uri: str) -> str | None:
    """Beside a local SQLite store, not MLflow's default ``./mlruns`` in the working directory.

    A tracking server (the cluster's) decides its own artifact root, so ``None`` there.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()


def register_version(
    tracking_uri: str, model_name: str, run_id: str, store_version: int, storage_uri: str
) -> str:
    """Register the run's model as a new version of ``model_name``; return the MLflow version."""
    client = _client(tracking_uri)
    try:
        client.get_registered_model(model_name)
    except Exception:  # MlflowException(RESOURCE_DOES_NOT_EXIST)
        client.create_registered_model(model_name)
    version = client.create_model_version(
        model_name,
        source=f"runs:/{run_id}/model",
        run_id=run_id,
        tags={_STORE_VERSION_TAG: str(store_version), _STORAGE_URI_TAG: storage_uri},
    )
    return str(version.version)


def storage_uri_of_alias(tracking_uri: str, model_name: str, alias: str) -> str | None:
    """The ``storage_uri`` of the version holding ``alias``, or ``None`` when none does."""
    client = _client(tracking_uri)
    try:
        version = client.get_model_version_by_alias(model_name, alias)
    except Exception:  # no such model or alias
        return None
    return str(version.tags.get(_STORAGE_URI_TAG)) or None


def move_alias(tracking_uri: str, model_name: str, store_version: int | str, alias: str) -> None:
    """Point ``alias`` at the registered version of ``store_version`` (no-op if unregistered)."""
    client = _client(tracking_uri)
    found = client.search_model_versions(
        f"name='{model_name}' and tag.{_STORE_VERSION_TAG}='{store_version}'"
    )
    if found:
        client.set_registered_model_alias(model_name, alias, found[0].version)


def drop_alias(tracking_uri: str, model_name: str, alias: str) -> None:
    """Remove ``alias`` if it is set."""
    client = _client(tracking_uri)
    try:
        client.delete_registered_model_alias(model_name, alias)
    except Exception:  # alias or model does not exist
        return


def version_of_run(tracking_uri: str, model_name: str, run_id: str) -> tuple[int, str] | None:
    """The ``(store_version, storage_uri)`` registered from ``run_id``, if any."""
    client = _client(tracking_uri)
    found = client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
    if not found:
        return None
    tags = found[0].tags
    return int(tags[_STORE_VERSION_TAG]), str(tags[_STORAGE_URI_TAG])
