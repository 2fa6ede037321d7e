"""Step 0 (KFP shell): refuse bad parameters before any step writes (``mlops.parameters``)."""

from kfp import dsl

from components._image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def check_parameters(
    model_name: str,
    canary_traffic_percent: int,
    test_size: float,
    gate_metric: str,
    min_score: float,
    max_degradation: float,
    label_noise: float,
    min_rows: int,
    seed: int,
    estimator: str,
    hyperparameters: dict,
    namespace: str,
    service_account: str,
    deploy_target: str,
    rollout_steps: str,
    rollout_interval_s: float,
    rollout_min_requests: int,
) -> None:
    """Fail the run with one line naming the first invalid parameter.

    A run started from the KFP UI never passes through ``mlops run``'s check: this step is the
    first of the graph so that nothing (store, MLflow, InferenceService) is written before it.
    Its own pod, rather than a part of ``load_data``, so that the check needs no data access
    and its failure reads as what it is in the UI. The rollout step's parameters are checked
    here too: that step runs after the deploy, too late to refuse a bad value.

    Args:
        model_name: The InferenceService, store and registered model name.
        canary_traffic_percent: 0..100.
        test_size: Within (0, 1).
        gate_metric: One of ``mlops.parameters.GATE_METRICS``.
        min_score: Within [0, 1].
        max_degradation: Within [0, 1].
        label_noise: Within [0, 1).
        min_rows: At least 1.
        seed: An integer.
        estimator: A known estimator.
        hyperparameters: Parameters of that estimator.
        namespace: A DNS label.
        service_account: A DNS subdomain, or empty.
        deploy_target: ``local`` or ``kubernetes``.
        rollout_steps: Empty, or increasing shares within 1..100 (``kubernetes`` only).
        rollout_interval_s: More than 0.
        rollout_min_requests: At least 1.
    """
    from mlops.parameters import check_parameters as check

    check(
        {
            "model_name": model_name,
            "canary_traffic_percent": canary_traffic_percent,
            "test_size": test_size,
            "gate_metric": gate_metric,
            "min_score": min_score,
            "max_degradation": max_degradation,
            "label_noise": label_noise,
            "min_rows": min_rows,
            "seed": seed,
            "estimator": estimator,
            "hyperparameters": hyperparameters,
            "namespace": namespace,
            "service_account": service_account,
            "deploy_target": deploy_target,
            "rollout_steps": rollout_steps,
            "rollout_interval_s": rollout_interval_s,
            "rollout_min_requests": rollout_min_requests,
        }
    )
