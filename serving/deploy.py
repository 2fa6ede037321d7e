"""Apply the InferenceService for the new version, as a canary when one already serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from serving.inference_service import PredictorSettings, build_inference_service

TARGETS = ("local", "kubernetes")


def deploy_inference_service(
    settings: PredictorSettings, target: str, state_dir: Path, timeout_s: int = 600
) -> dict[str, Any]:
    """Apply the InferenceService for ``settings`` to ``target``; return it with its status.

    ``settings.canary_traffic_percent`` applies only when a revision already serves: the first
    deploy takes all traffic, as in KServe.

    Args:
        settings: What to deploy; ``canary_traffic_percent`` is the share of a later deploy.
        target: ``local`` (state under ``state_dir``, read by ``mlops serve``) or
            ``kubernetes`` (KServeClient, current kubeconfig).
        state_dir: The local state directory.
        timeout_s: How long the kubernetes target waits for readiness.

    Raises:
        ValueError: When ``target`` is unknown.
    """
    if target not in TARGETS:
        raise ValueError(f"target {target!r} is unknown: use one of {list(TARGETS)}")
    if target == "local":
        from serving import local_controller

        try:
            local_controller.read_state(settings.name, state_dir)
        except local_controller.NotDeployedError:
            settings = _first_deploy(settings)
        return local_controller.apply(build_inference_service(settings), state_dir)
    from serving import kubernetes_target

    first = not kubernetes_target.exists(settings.name, settings.namespace)
    if first:
        settings = _first_deploy(settings)
    return kubernetes_target.apply(build_inference_service(settings), timeout_s, create=first)


def _first_deploy(settings: PredictorSettings) -> PredictorSettings:
    from dataclasses import replace

    return replace(settings, canary_traffic_percent=None)


def takes_all_traffic(isvc: dict[str, Any]) -> bool:
    """Whether the latest revision gets 100% (the version becomes the champion)."""
    traffic = isvc.get("status", {}).get("components", {}).get("predictor", {}).get("traffic", [])
    return any(t.get("latestRevision") and t.get("percent") == 100 for t in traffic)


def set_canary_traffic(
    name: str,
    percent: int | None,
    target: str,
    *,
    state_dir: Path,
    namespace: str = "default",
    tracking_uri: str | None = None,
    timeout_s: int = 600,
) -> dict[str, Any]:
    """Promote (``percent=None``) or roll back (``percent=0``) the latest revision.

    Moves the MLflow aliases to match: a promoted version becomes ``champion``; after a
    rollback nothing is ``challenger`` any more.
    """
    if target not in TARGETS:
        raise ValueError(f"target {target!r} is unknown: use one of {list(TARGETS)}")
    if target == "local":
        from serving import local_controller

        applied = local_controller.set_canary_percent(name, percent, state_dir)
    else:
        from serving import kubernetes_target

        applied = kubernetes_target.set_canary_percent(name, namespace, percent, timeout_s)
    if tracking_uri:
        from mlops import registry
        from serving.inference_service import MODEL_VERSION_LABEL

        if takes_all_traffic(applied):
            version = applied["metadata"].get("labels", {}).get(MODEL_VERSION_LABEL)
            if version:
                registry.move_alias(tracking_uri, name, version, registry.CHAMPION)
        registry.drop_alias(tracking_uri, name, registry.CHALLENGER)
    return applied
