"""Apply the InferenceService for the new version, as a canary when one already serves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.inference_service import PredictorSettings, TrafficSpec, build_inference_service

# Conditional local writes redone on a fresh read when the state changed in between (the
# server records its address or a revision's failure; neither is a traffic change).
CONFLICT_ATTEMPTS = 3

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


@dataclass(frozen=True)
class ServingVersions:
    """Which model versions an InferenceService serves, read from its traffic status.

    Attributes:
        stable: The version of the production revision: the one with all traffic, the
            ``prev`` one while a canary runs or after a rollback. ``None`` when unknown.
        canary: The version of the latest revision while it takes 0 < percent < 100.
    """

    stable: str | None
    canary: str | None


def serving_versions(isvc: dict[str, Any], revision_versions: Mapping[str, str]) -> ServingVersions:
    """The one rule for the aliases: ``champion`` = ``stable``, ``challenger`` = ``canary``.

    Args:
        isvc: The InferenceService with its status.
        revision_versions: Model version per revision name, as far as it is known.
    """
    predictor = isvc.get("status", {}).get("components", {}).get("predictor", {})
    traffic = predictor.get("traffic", [])
    latest = next((t for t in traffic if t.get("latestRevision")), None)
    prev = next((t for t in traffic if not t.get("latestRevision")), None)

    def version(target: dict[str, Any] | None) -> str | None:
        found = revision_versions.get(str((target or {}).get("revisionName")))
        return str(found) if found else None

    if latest is None:  # the latest revision failed to load: only the previous one serves
        return ServingVersions(stable=version(prev), canary=None)
    if prev is not None and prev.get("revisionName") == latest.get("revisionName"):
        # KServe splits one revision with itself after a retried first deploy (latest 10%,
        # prev 90%, both revision 1): one version serves everything, there is no canary.
        return ServingVersions(stable=version(latest), canary=None)
    percent = int(latest.get("percent", 0))
    if percent >= 100 or prev is None:
        return ServingVersions(stable=version(latest), canary=None)
    return ServingVersions(stable=version(prev), canary=version(latest) if percent > 0 else None)


def revision_versions(isvc: dict[str, Any], target: str, state_dir: Path) -> dict[str, str]:
    """Model version per revision named in the traffic, as far as it is known.

    Locally the state records every revision's version. In the cluster each Knative Revision
    in ``status.components.predictor.traffic`` is read: it carries the version label and the
    storage URI of the InferenceService it was made from (``kubernetes_target.revision_versions``),
    so the ``prev`` revision's version is known too. A revision that no longer exists is unknown.

    Raises:
        RuntimeError: When the cluster cannot be read.
    """
    if target == "local":
        from serving import local_controller

        state = local_controller.read_state(isvc["metadata"]["name"], state_dir)
        return {rev: str(info.get("modelVersion", "")) for rev, info in state["revisions"].items()}
    from serving import kubernetes_target

    predictor = isvc.get("status", {}).get("components", {}).get("predictor", {})
    names = [str(t["revisionName"]) for t in predictor.get("traffic", []) if t.get("revisionName")]
    namespace = isvc.get("metadata", {}).get("namespace") or "default"
    return kubernetes_target.revision_versions(namespace, names)


def deployed_versions(
    name: str, target: str, *, state_dir: Path, namespace: str = "default"
) -> ServingVersions | None:
    """What the deployed InferenceService ``name`` serves, or ``None`` when none is deployed.

    Raises:
        ValueError: When ``target`` is unknown.
        RuntimeError: When the cluster cannot be read (never "not deployed": a deployed model
            must not be mistaken for none).
    """
    if target not in TARGETS:
        raise ValueError(f"target {target!r} is unknown: use one of {list(TARGETS)}")
    if target == "local":
        from serving import local_controller

        try:
            isvc = dict(local_controller.read_state(name, state_dir)["inferenceService"])
        except local_controller.NotDeployedError:
            return None
    else:
        from serving import kubernetes_target

        try:
            isvc = kubernetes_target.get(name, namespace)
        except LookupError:
            return None
    return serving_versions(isvc, revision_versions(isvc, target, state_dir))


def sync_aliases(
    tracking_uri: str, isvc: dict[str, Any], target: str, state_dir: Path
) -> ServingVersions:
    """Point ``champion`` and ``challenger`` at what ``isvc`` serves (``serving_versions``).

    Used after every deploy, promote and rollback, so the aliases never disagree with traffic.
    """
    from mlops import registry

    versions = serving_versions(isvc, revision_versions(isvc, target, state_dir))
    registry.set_aliases(tracking_uri, isvc["metadata"]["name"], versions.stable, versions.canary)
    return versions


def set_canary_traffic(
    name: str,
    percent: int | None,
    target: str,
    *,
    state_dir: Path,
    namespace: str = "default",
    tracking_uri: str | None = None,
    timeout_s: int = 600,
    expected: TrafficSpec | None = None,
) -> dict[str, Any]:
    """Promote (``percent=None``), roll back (``percent=0``) or move the latest revision's share.

    Then moves the MLflow aliases to match the new traffic (``sync_aliases``).

    Args:
        name: The InferenceService.
        percent: The latest revision's new share, ``None`` to promote.
        target: ``local`` or ``kubernetes``.
        state_dir: The local state directory.
        namespace: The namespace (kubernetes target).
        tracking_uri: MLflow, whose aliases follow (``None``: leave them).
        timeout_s: How long the kubernetes target waits for the new split.
        expected: The traffic the caller last set: the write is conditional on it and on the
            resourceVersion read just before (a rollout's writes; ``None`` for a human's).

    Raises:
        TrafficChangedError: When the traffic is no longer ``expected`` (nothing changed).
    """
    if target not in TARGETS:
        raise ValueError(f"target {target!r} is unknown: use one of {list(TARGETS)}")
    if target == "local":
        applied = _set_local(name, percent, state_dir, expected)
    else:
        from serving import kubernetes_target

        applied = kubernetes_target.set_canary_percent(
            name, namespace, percent, timeout_s, expected
        )
    if tracking_uri:
        sync_aliases(tracking_uri, applied, target, state_dir)
    return applied


def _set_local(
    name: str, percent: int | None, state_dir: Path, expected: TrafficSpec | None
) -> dict[str, Any]:
    """The local write: on the resourceVersion just read, redone when it moved meanwhile."""
    from serving import local_controller

    if expected is None:
        return local_controller.set_canary_percent(name, percent, state_dir)
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        isvc = local_controller.read_state(name, state_dir)["inferenceService"]
        version = str(isvc["metadata"].get("resourceVersion", ""))
        try:
            return local_controller.set_canary_percent(
                name, percent, state_dir, expected=expected, if_version=version
            )
        except local_controller.ConflictError:
            if attempt == CONFLICT_ATTEMPTS:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def stable_side(
    name: str, target: str, *, state_dir: Path, namespace: str = "default"
) -> tuple[str, str] | None:
    """The ``(revision, model version)`` a new canary of ``name`` would split with.

    KServe's ``createKnativeService`` gives the ``prev`` side to ``latestRolledoutRevision``
    (kserve v0.20.0 ``pkg/controller/v1beta1/inferenceservice/reconcilers/knative/
    ksvc_reconciler.go``), in both targets. ``None`` when nothing is deployed (a first deploy
    takes all traffic) or nothing has rolled out; the version is ``""`` when unknown.

    Raises:
        RuntimeError: When the cluster cannot be read.
    """
    if target == "local":
        from serving import local_controller

        try:
            state = local_controller.read_state(name, state_dir)
        except local_controller.NotDeployedError:
            return None
        isvc = dict(state["inferenceService"])
        versions = {r: str(i.get("modelVersion", "")) for r, i in state["revisions"].items()}
    else:
        from serving import kubernetes_target

        try:
            isvc = kubernetes_target.get(name, namespace)
        except LookupError:
            return None
        versions = {}
    predictor = isvc.get("status", {}).get("components", {}).get("predictor", {})
    revision = predictor.get("latestRolledoutRevision")
    if not revision:
        return None
    if target != "local":
        from serving import kubernetes_target

        versions = kubernetes_target.revision_versions(namespace, [revision])
    return str(revision), versions.get(str(revision), "")
