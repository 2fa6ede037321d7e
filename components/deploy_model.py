"""Step 6 (KFP shell): register the version, apply the InferenceService (``serving.deploy``)."""

from kfp import dsl

from components._image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def deploy_model(
    storage_uri: str,
    model_version: int,
    model_name: str,
    namespace: str,
    canary_traffic_percent: int,
    service_account: str,
    target: str,
    state_dir: str,
    tracking_uri: str,
    mlflow_run_id: str,
) -> str:
    """Register the version in MLflow, apply the InferenceService, move the aliases.

    Registered first, so that the alias ``champion`` or ``challenger`` can name it once the
    InferenceService serves it; a version whose deploy fails stays registered, without alias.

    Args:
        storage_uri: The model version directory.
        model_version: The store version.
        model_name: The InferenceService and registered model name.
        namespace: Kubernetes namespace (kubernetes target).
        canary_traffic_percent: Share for the new revision when one already serves.
        service_account: ServiceAccount with the S3 Secret (kubernetes target; empty: the
            namespace's ``default`` one).
        target: ``local`` or ``kubernetes``.
        state_dir: The local state directory (local target).
        tracking_uri: MLflow tracking URI.
        mlflow_run_id: The run that logged the model (registered once per run).

    Returns:
        The applied InferenceService as YAML.
    """
    from pathlib import Path

    import yaml

    from mlops import registry
    from serving.deploy import deploy_inference_service, sync_aliases
    from serving.inference_service import PredictorSettings, payload_sink_url

    registry.register_version_once(
        tracking_uri, model_name, mlflow_run_id, model_version, storage_uri
    )
    settings = PredictorSettings(
        name=model_name,
        namespace=namespace,
        storage_uri=storage_uri,
        model_version=model_version,
        canary_traffic_percent=canary_traffic_percent,
        service_account=service_account or None,
        # In the cluster every revision logs its payloads to the canary analysis's sink.
        payload_logger_url=payload_sink_url(namespace) if target == "kubernetes" else None,
    )
    applied = deploy_inference_service(settings, target, Path(state_dir))
    sync_aliases(tracking_uri, applied, target, Path(state_dir))
    rendered = yaml.safe_dump(applied, sort_keys=False)
    print(rendered)
    return rendered
