"""The training pipeline: load, validate, train, evaluate, then (gate passed) upload and deploy."""

from typing import Any, NamedTuple

from kfp import dsl

from components import (
    check_parameters,
    deploy_model,
    evaluate,
    load_data,
    rollout,
    train,
    upload_model,
    validate_data,
)
from mlops.settings import DEFAULT_MODEL_NAME

PIPELINE_NAME = "train-gate-deploy-sklearn"
# The store, MLflow and target defaults are the cluster's; `mlops run` passes local ones.
CLUSTER_STORE_URI = "s3://models"
CLUSTER_TRACKING_URI = "http://mlflow.kubeflow-user.svc.cluster.local:5000"
# The Secret in KFP's namespace (`kubeflow`) whose keys become every step's environment in the
# cluster: the model store's endpoint and keys (mlops.settings.S3Settings), and the key that signs
# and verifies model versions (mlops.signing; never stored in the bucket). manifests/ creates it.
CLUSTER_S3_SECRET = "mlops-s3"
S3_SECRET_KEYS = (
    "MLOPS_S3_ENDPOINT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "MLOPS_SIGNING_KEY",
)
# The ServiceAccount manifests/ creates with the S3 Secret the storage initializer reads; the
# namespace's `default` one lists no Secret, and the predictor could not download its model.
DEFAULT_SERVICE_ACCOUNT = "kserve-minio-sa"
# No KFP-level retries (`set_retry`): they rerun a step on ANY failure, so an empty CSV or a
# rejected deploy failed only after minutes of backoff, and a retried upload published again.
# Transient faults are retried where they happen: the S3 client (urllib3 Retry on network
# errors, 5xx and throttling), MLflow's REST client and the Kubernetes API calls.


def _s3_secret_as_env(task: Any, secret_name: Any) -> Any:
    """Set the keys of Secret ``secret_name`` as the task's env vars (KFP backend only).

    Written as the Kubernetes platform config (``SecretAsEnv`` in kubeflow/pipelines
    ``kubernetes_platform/proto/kubernetes_executor_config.proto``, read by the 2.17 driver),
    because the ``kfp-kubernetes`` releases on PyPI need kfp >= 2.17.3. ``optional``: without the
    Secret a step fails with S3Settings' own message instead of hanging in pod creation.
    ``kfp.local`` ignores platform config: a local run reads the caller's environment.
    """
    task.register_pipeline_channels([secret_name])
    secret_as_env = {
        "secretNameParameter": {"componentInputParameter": secret_name.full_name},
        "keyToEnv": [{"secretKey": key, "envVar": key} for key in S3_SECRET_KEYS],
        "optional": True,
    }
    kubernetes = task.platform_config.setdefault("kubernetes", {})
    kubernetes.setdefault("secretAsEnv", []).append(secret_as_env)
    return task


@dsl.pipeline(name=PIPELINE_NAME, description=__doc__)
def training_pipeline(
    source: str = "sklearn:breast_cancer",
    label_column: str = "target",
    min_rows: int = 100,
    expected_columns: list = [],  # noqa: B006 (KFP reads the default, it is never mutated)
    estimator: str = "logistic_regression",
    hyperparameters: dict = {},  # noqa: B006 (empty: the estimator's DEFAULT_HYPERPARAMETERS)
    test_size: float = 0.2,
    seed: int = 42,
    label_noise: float = 0.0,
    gate_metric: str = "accuracy",
    min_score: float = 0.9,
    max_degradation: float = 0.02,
    model_name: str = DEFAULT_MODEL_NAME,
    store_uri: str = CLUSTER_STORE_URI,
    tracking_uri: str = CLUSTER_TRACKING_URI,
    deploy_target: str = "kubernetes",
    namespace: str = "kubeflow-user",
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    canary_traffic_percent: int = 10,
    state_dir: str = "",
    s3_credentials_secret: str = CLUSTER_S3_SECRET,
    rollout_steps: str = "",
    rollout_interval_s: float = 60.0,
    rollout_min_requests: int = 50,
) -> NamedTuple("Outputs", deploy=bool, reason=str, mlflow_run_id=str, report=dsl.HTML):  # type: ignore[valid-type]  # noqa: UP014, E501
    """Train a classifier and ship it only when it is at least as good as production."""
    checked = check_parameters(
        model_name=model_name,
        canary_traffic_percent=canary_traffic_percent,
        test_size=test_size,
        gate_metric=gate_metric,
        min_score=min_score,
        max_degradation=max_degradation,
        label_noise=label_noise,
        min_rows=min_rows,
        seed=seed,
        estimator=estimator,
        hyperparameters=hyperparameters,
        namespace=namespace,
        service_account=service_account,
        deploy_target=deploy_target,
        rollout_steps=rollout_steps,
        rollout_interval_s=rollout_interval_s,
        rollout_min_requests=rollout_min_requests,
    )
    loaded = load_data(source=source).set_caching_options(False).after(checked)
    _s3_secret_as_env(loaded, s3_credentials_secret)
    validated = validate_data(
        dataset=loaded.outputs["dataset"],
        label_column=label_column,
        min_rows=min_rows,
        expected_columns=expected_columns,
    )
    trained = train(
        dataset=loaded.outputs["dataset"],
        label_column=label_column,
        estimator=estimator,
        hyperparameters=hyperparameters,
        test_size=test_size,
        seed=seed,
        label_noise=label_noise,
    ).after(validated)
    # Not cached: the champion it compares against changes between runs.
    evaluated = evaluate(
        model=trained.outputs["model"],
        holdout=trained.outputs["holdout"],
        label_column=label_column,
        model_name=model_name,
        gate_metric=gate_metric,
        min_score=min_score,
        max_degradation=max_degradation,
        tracking_uri=tracking_uri,
        deploy_target=deploy_target,
        namespace=namespace,
        state_dir=state_dir,
        data_source=source,
        data_fingerprint=validated.outputs["Output"],
    ).set_caching_options(False)
    _s3_secret_as_env(evaluated, s3_credentials_secret)
    with dsl.If(evaluated.outputs["Output"] == True, name="gate-passed"):  # noqa: E712
        uploaded = upload_model(
            model=trained.outputs["model"],
            metrics=evaluated.outputs["metrics"],
            reference=validated.outputs["reference"],
            data_fingerprint=validated.outputs["Output"],
            model_name=model_name,
            store_uri=store_uri,
            mlflow_run_id=evaluated.outputs["mlflow_run_id"],
        ).set_caching_options(False)
        _s3_secret_as_env(uploaded, s3_credentials_secret)
        deployed = deploy_model(
            storage_uri=uploaded.outputs["storage_uri"],
            model_version=uploaded.outputs["version"],
            model_name=model_name,
            namespace=namespace,
            canary_traffic_percent=canary_traffic_percent,
            service_account=service_account,
            target=deploy_target,
            state_dir=state_dir,
            tracking_uri=tracking_uri,
            mlflow_run_id=evaluated.outputs["mlflow_run_id"],
        ).set_caching_options(False)
        _s3_secret_as_env(deployed, s3_credentials_secret)
        # Empty steps: the canary waits for `mlops promote` / `mlops rollback` (manual).
        with dsl.If(rollout_steps != "", name="rollout-automated"):
            rolled = rollout(
                model_name=model_name,
                namespace=namespace,
                rollout_steps=rollout_steps,
                rollout_interval_s=rollout_interval_s,
                rollout_min_requests=rollout_min_requests,
                target=deploy_target,
                tracking_uri=tracking_uri,
            ).set_caching_options(False)
            rolled.after(deployed)
            _s3_secret_as_env(rolled, s3_credentials_secret)
    Outputs = NamedTuple(  # noqa: N806, UP014
        "Outputs",
        [("deploy", bool), ("reason", str), ("mlflow_run_id", str), ("report", dsl.HTML)],
    )
    return Outputs(
        deploy=evaluated.outputs["Output"],
        reason=evaluated.outputs["reason"],
        mlflow_run_id=evaluated.outputs["mlflow_run_id"],
        report=evaluated.outputs["report"],
    )
