"""Step 5 (KFP shell): publish a new model version to the store (``mlops.publishing``)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model

from components._image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def upload_model(
    model: Input[Model],
    metrics: Input[Metrics],
    reference: Input[Artifact],
    data_fingerprint: str,
    model_name: str,
    store_uri: str,
    mlflow_run_id: str,
) -> NamedTuple("Outputs", version=int, storage_uri=str):  # type: ignore[valid-type]  # noqa: UP014
    """Publish ``<store>/<model_name>/<version>/{model.joblib,metadata.json}``.

    MLflow is not imported here (a second or two in a fresh interpreter): ``deploy_model``
    registers the version, where MLflow is needed anyway to move the aliases.

    Args:
        model: The model that passed the gate.
        metrics: Its holdout metrics.
        reference: Per-feature training statistics (for drift).
        data_fingerprint: sha256 of the training data.
        model_name: Name in the store and the registry.
        store_uri: A local directory or ``s3://bucket``.
        mlflow_run_id: The run that logged this model (in the metadata; a step run again for
            the same run returns the version it already published).

    Returns:
        The new version and its ``storage_uri``.
    """
    import json
    from collections import namedtuple
    from pathlib import Path

    from mlops.publishing import build_metadata, publish_model

    Outputs = namedtuple("Outputs", ["version", "storage_uri"])  # noqa: N806 (KFP's idiom)
    with open(reference.path) as handle:
        reference_stats = json.load(handle)
    metadata = build_metadata(
        Path(model.path),
        metrics={k: float(v) for k, v in metrics.metadata.items()},
        data_fingerprint=data_fingerprint,
        params=model.metadata.get("params", {}),
        reference=reference_stats,
        feature_names=model.metadata.get("feature_names", []),
        sklearn_version=model.metadata.get("sklearn_version", ""),
        schema=json.loads(model.metadata.get("schema") or "{}"),
    )
    metadata["mlflow_run_id"] = mlflow_run_id
    version, storage_uri = publish_model(store_uri, model_name, Path(model.path), metadata)
    print(f"{model_name} version {version} of run {mlflow_run_id} is at {storage_uri}")
    return Outputs(version, storage_uri)
