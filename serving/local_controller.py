"""The local stand-in for KServe's controller in Knative mode: revisions, traffic and status.

``apply`` takes the InferenceService that ``deploy_model`` built and records it the way KServe
would: a change to the predictor creates a new revision (``<name>-predictor-00002``), and
``spec.predictor.canaryTrafficPercent`` splits traffic between that latest revision and the
last rolled-out one (tag ``prev``). The first revision takes all traffic. A revision becomes
*rolled out* when it gets 100%. The local model server (``mlops serve``) reads this state.

A revision whose model the server cannot load is recorded as failed (``mark_revision_failed``):
like a Knative revision that never becomes ready, it takes no traffic, the last ready revision
keeps it, and the Ready condition says why. ``record_server`` points the status URLs at the
running local server.

State lives in ``<state dir>/serving/<name>.yaml``: the InferenceService with its status, the
revisions (what each one serves, and why one failed), and the local server's address. Writers
hold a file lock and replace the file atomically, so a reader never sees half a state.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from serving.inference_service import check_canary_percent, to_dict


class NotDeployedError(LookupError):
    """No InferenceService of that name has been deployed locally."""


@dataclass(frozen=True)
class TrafficTarget:
    """One revision that receives traffic.

    Attributes:
        revision: Revision name, e.g. ``breast-cancer-predictor-00002``.
        tag: ``latest`` or ``prev`` (as KServe tags them).
        percent: Share of requests, 0..100.
        storage_uri: The model version directory this revision serves.
        model_version: The store version behind ``storage_uri``.
    """

    revision: str
    tag: str
    percent: int
    storage_uri: str
    model_version: str


def state_path(name: str, state_dir: Path) -> Path:
    """Where the local state of InferenceService ``name`` lives."""
    return state_dir / "serving" / f"{name}.yaml"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def read_state(name: str, state_dir: Path) -> dict[str, Any]:
    """The recorded state: ``{"inferenceService": {...}, "revisions": {...}}``.

    Raises:
        NotDeployedError: When nothing named ``name`` was deployed under ``state_dir``.
    """
    path = state_path(name, state_dir)
    if not path.exists():
        raise NotDeployedError(
            f"InferenceService {name!r} is not deployed locally (no {path}); run `mlops run` first"
        )
    return dict(yaml.safe_load(path.read_text()))


def _write_state(state: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(yaml.safe_dump(state, sort_keys=False))
    os.replace(tmp, path)


def _template(isvc: dict[str, Any]) -> dict[str, Any]:
    # Knative cuts a new revision when the pod template changes, not when only traffic does.
    predictor = copy.deepcopy(isvc["spec"]["predictor"])
    predictor.pop("canaryTrafficPercent", None)
    return dict(predictor)


def apply(isvc: Any, state_dir: Path) -> dict[str, Any]:
    """Record a new desired InferenceService (typed or dict) and return it with its status."""
    desired = isvc if isinstance(isvc, dict) else to_dict(isvc)
    name = desired["metadata"]["name"]
    path = state_path(name, state_dir)
    with _locked(path):
        state = yaml.safe_load(path.read_text()) if path.exists() else None
        return _reconcile(copy.deepcopy(desired), state, path)


def set_canary_percent(name: str, percent: int | None, state_dir: Path) -> dict[str, Any]:
    """Change ``canaryTrafficPercent`` (``None`` removes it) and reconcile, as a replace would.

    ``None`` is *promote* (latest takes all traffic), ``0`` is *rollback* (all traffic back to
    the previously rolled-out revision).

    Raises:
        ValueError: When ``percent`` is outside 0..100.
    """
    check_canary_percent(percent)
    path = state_path(name, state_dir)
    with _locked(path):
        state = read_state(name, state_dir)
        desired = copy.deepcopy(state["inferenceService"])
        desired.pop("status", None)
        predictor = desired["spec"]["predictor"]
        if percent is None:
            predictor.pop("canaryTrafficPercent", None)
        else:
            predictor["canaryTrafficPercent"] = percent
        return _reconcile(desired, state, path)


def _reconcile(
    desired: dict[str, Any],
    state: dict[str, Any] | None,
    path: Path,
    *,
    spec_changed: bool = True,
) -> dict[str, Any]:
    name = desired["metadata"]["name"]
    previous = (state or {}).get("inferenceService", {})
    revisions: dict[str, Any] = dict((state or {}).get("revisions", {}))
    status = copy.deepcopy(previous.get("status", {}))
    predictor_status = status.setdefault("components", {}).setdefault("predictor", {})

    metadata = desired["metadata"]
    metadata["creationTimestamp"] = previous.get("metadata", {}).get("creationTimestamp", _now())
    metadata["generation"] = previous.get("metadata", {}).get("generation", 0) + int(spec_changed)

    latest = predictor_status.get("latestCreatedRevision")
    if latest is None or revisions[latest]["template"] != _template(desired):
        latest = f"{name}-predictor-{len(revisions) + 1:05d}"
        model = desired["spec"]["predictor"]["model"]
        revisions[latest] = {
            "storageUri": model["storageUri"],
            "modelVersion": metadata.get("labels", {}).get("mlops.example.com/model-version", ""),
            "createdAt": _now(),
            "template": _template(desired),
        }
        predictor_status["latestCreatedRevision"] = latest
        predictor_status["latestReadyRevision"] = latest

    canary = desired["spec"]["predictor"].get("canaryTrafficPercent")
    server = (state or {}).get("server")
    namespace = metadata.get("namespace", "default")
    url = server["url"] if server else f"http://{name}.{namespace}.example.com"
    # As KServe's ksvc reconciler: the 'prev' target is the last rolled-out revision, or, when
    # the latest is itself rolled out and a canary is set again (a rollback after a promote),
    # the one rolled out before it.
    prev = predictor_status.get("latestRolledoutRevision")
    if prev == latest and canary is not None and canary < 100:
        prev = predictor_status.get("previousRolledoutRevision")
    if canary is not None and prev:
        traffic = [_target(latest, "latest", canary, latest=True)]
        if canary < 100:
            traffic.append(_target(prev, "prev", 100 - canary, latest=False))
    else:
        traffic = [_target(latest, "latest", 100, latest=True)]
    failed = {rev: info["failed"] for rev, info in revisions.items() if info.get("failed")}
    traffic = _route_around_failed(traffic, failed, predictor_status)
    # A revision is rolled out once it takes all traffic.
    rolled_out = predictor_status.get("latestRolledoutRevision")
    if traffic and traffic[0]["latestRevision"] and traffic[0]["percent"] == 100:
        if rolled_out != latest:
            if rolled_out is not None:
                predictor_status["previousRolledoutRevision"] = rolled_out
            predictor_status["latestRolledoutRevision"] = latest
    ready: dict[str, Any] = {"type": "Ready", "status": "True", "lastTransitionTime": _now()}
    if latest in failed:
        # As Knative: a revision that never became ready takes no traffic, the last ready one
        # keeps serving, and the InferenceService is not Ready until a new revision is.
        serving_now = next((t["revisionName"] for t in traffic if t["percent"]), None)
        if serving_now:
            predictor_status["latestReadyRevision"] = serving_now
        else:
            predictor_status.pop("latestReadyRevision", None)
        ready.update(
            status="False",
            reason="RevisionFailed",
            message=f"Revision {latest!r} failed to load: {failed[latest]['reason']}",
        )
    predictor_status["traffic"] = traffic
    status.update(
        observedGeneration=metadata["generation"],
        deploymentMode="Knative",
        conditions=[ready],
    )
    _set_urls(status, name, url, local=bool(server))
    desired["status"] = status
    new_state: dict[str, Any] = {"inferenceService": desired, "revisions": revisions}
    if server:
        new_state["server"] = server
    _write_state(new_state, path)
    return desired


def _target(revision: str, tag: str, percent: int, *, latest: bool) -> dict[str, Any]:
    return {"tag": tag, "revisionName": revision, "latestRevision": latest, "percent": percent}


def _route_around_failed(
    traffic: list[dict[str, Any]], failed: dict[str, Any], predictor_status: dict[str, Any]
) -> list[dict[str, Any]]:
    """Drop revisions that failed to load; their share goes to the ones that still serve."""
    live = [t for t in traffic if t["revisionName"] not in failed]
    if len(live) == len(traffic):
        return traffic
    if not live:
        rolled_out = (
            predictor_status.get("latestRolledoutRevision"),
            predictor_status.get("previousRolledoutRevision"),
        )
        fallback = next((r for r in rolled_out if r and r not in failed), None)
        return [_target(fallback, "prev", 100, latest=False)] if fallback else []
    total = sum(t["percent"] for t in live)
    for target in live:
        target["percent"] = round(100 * target["percent"] / total) if total else 0
    if not total:
        live[0]["percent"] = 100
    live[0]["percent"] += 100 - sum(t["percent"] for t in live)
    return live


def _set_urls(status: dict[str, Any], name: str, url: str, *, local: bool) -> None:
    """Set the status URLs: the cluster-style host names, or the local server's paths.

    KServe's tag routing gives each tagged revision a ``<tag>-`` host name; the local server
    reaches one revision under ``/v2/models/<name>/versions/<tag>`` instead.
    """
    predictor = status.setdefault("components", {}).setdefault("predictor", {})
    status["url"] = url
    predictor["url"] = url
    for target in predictor.get("traffic", []):
        tag = target["tag"]
        if local:
            target["url"] = f"{url}/v2/models/{name}/versions/{tag}"
        else:
            target["url"] = f"http://{tag}-{url.removeprefix('http://')}"


def mark_revision_failed(name: str, revision: str, reason: str, state_dir: Path) -> dict[str, Any]:
    """Record that ``revision`` could not be loaded, and route traffic around it.

    The model server calls this when a revision's model fails to load (a missing file, a
    sha256 mismatch). Like a Knative revision that never becomes ready, it then takes no
    traffic; the state says why in ``revisions.<name>.failed`` and in the Ready condition.

    Args:
        name: The InferenceService name.
        revision: The revision that failed.
        reason: Why, in one line.
        state_dir: The local state directory.

    Returns:
        The InferenceService with its new status.

    Raises:
        NotDeployedError: When nothing named ``name`` is deployed.
        KeyError: When ``revision`` is not one of its revisions.
    """
    path = state_path(name, state_dir)
    with _locked(path):
        state = read_state(name, state_dir)
        if revision not in state["revisions"]:
            raise KeyError(f"InferenceService {name!r} has no revision {revision!r}")
        state["revisions"][revision]["failed"] = {"reason": reason, "at": _now()}
        desired = copy.deepcopy(state["inferenceService"])
        desired.pop("status", None)
        # A status change, not a spec change: the generation stays, as in the cluster.
        return _reconcile(desired, state, path, spec_changed=False)


def record_server(name: str, url: str, state_dir: Path) -> dict[str, Any]:
    """Record the local server's address, so the status URLs (and `mlops get`) point at it.

    Raises:
        NotDeployedError: When nothing named ``name`` is deployed.
    """
    path = state_path(name, state_dir)
    with _locked(path):
        state = read_state(name, state_dir)
        state["server"] = {"url": url}
        _set_urls(state["inferenceService"].setdefault("status", {}), name, url, local=True)
        _write_state(state, path)
        return dict(state["inferenceService"])


def forget_server(name: str, url: str, state_dir: Path) -> None:
    """Clear the recorded server address if it is still ``url`` (a stopping server calls this).

    Another server that recorded its own address meanwhile keeps it. Without a server, the
    status URLs are the cluster-style ones a deploy writes.
    """
    path = state_path(name, state_dir)
    with _locked(path):
        try:
            state = read_state(name, state_dir)
        except NotDeployedError:
            return
        if state.get("server", {}).get("url") != url:
            return
        del state["server"]
        isvc = state["inferenceService"]
        namespace = isvc.get("metadata", {}).get("namespace", "default")
        default_url = f"http://{name}.{namespace}.example.com"
        _set_urls(isvc.setdefault("status", {}), name, default_url, local=False)
        _write_state(state, path)


def traffic_targets(state: dict[str, Any]) -> list[TrafficTarget]:
    """The revisions that receive traffic, with what they serve, in the order of the status."""
    revisions = state["revisions"]
    predictor = state["inferenceService"]["status"]["components"]["predictor"]
    return [
        TrafficTarget(
            revision=t["revisionName"],
            tag=t["tag"],
            percent=int(t["percent"]),
            storage_uri=revisions[t["revisionName"]]["storageUri"],
            model_version=str(revisions[t["revisionName"]]["modelVersion"]),
        )
        for t in predictor.get("traffic", [])
    ]
