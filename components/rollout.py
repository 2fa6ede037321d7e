"""Step 7 (KFP shell): the automated canary rollout after ``deploy_model`` (cluster only).

The logic is ``serving.kubernetes_signals.run_cluster_rollout``; this shell writes its report
as the step's ``Output[HTML]`` (the KFP UI shows it under the step's Visualizations).
"""

from kfp import dsl
from kfp.dsl import HTML, Output

from components._image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def rollout(
    model_name: str,
    namespace: str,
    rollout_steps: str,
    rollout_interval_s: float,
    rollout_min_requests: int,
    target: str,
    tracking_uri: str,
    report: Output[HTML],
) -> str:
    """Step the canary up and promote it (the last step, 100, is the promote), or roll it back.

    Args:
        model_name: The InferenceService and registered model name.
        namespace: Its namespace.
        rollout_steps: Canary shares, e.g. ``10,50,100``.
        rollout_interval_s: Seconds of traffic judged per step.
        rollout_min_requests: Canary requests a window needs to be judged.
        target: ``kubernetes`` (locally, ``mlops run --rollout auto`` does this).
        tracking_uri: MLflow tracking URI.
        report: The HTML report: every signal per step, the decision and the reason.

    Returns:
        ``promoted``, ``rolled-back`` (a rollback is a decision, not a failed step) or
        ``stopped`` (someone's promote or rollback meanwhile; their traffic stays).
    """
    from serving.kubernetes_signals import run_cluster_rollout

    if target != "kubernetes":
        raise ValueError(
            f"target {target!r}: the rollout step runs in the cluster only; locally use "
            "`mlops run --rollout auto` or `mlops rollout`"
        )
    result, page = run_cluster_rollout(
        model_name,
        namespace,
        rollout_steps,
        rollout_interval_s,
        rollout_min_requests,
        tracking_uri or None,
    )
    with open(report.path, "w") as out:
        out.write(page)
    print(f"{result.outcome}: {result.reason}")
    return result.outcome
