"""The local stand-in for KServe's controller in Knative mode: revisions, traffic and status.

``apply`` takes the InferenceService that ``deploy_model`` built and records it the way KServe
would: a change to the predictor creates a new revision (``<name>-predictor-00002``), and
``spec.predictor.canaryTrafficPercent`` splits traffic between that latest revision and the
last rolled-out one (tag ``prev``). The first revision takes all traffic. A revision becomes
*rolled out* when it gets 100%; a rollback of the rolled-out latest revision re-points the
rolled-out revision at the one before it, as KServe's ``PropagateStatus`` does, so a later
deploy splits with the revision that serves, never with the one rolled back. The local model
server (``mlops serve``) reads this state.

A revision whose model the server cannot load is recorded as failed (``mark_revision_failed``):
it keeps its share of traffic in the status (requests routed to it get 503 until it loads, as a
Knative revision that is not ready does), the Ready condition is False and names it, and it is
never recorded as rolled out by being routed around. ``set_canary_percent`` refuses to give all
traffic to a failed revision. The server retries loading it and, when it loads, clears the
failure (``clear_revision_failure``). ``record_server`` points the status URLs at the running
local server.

State lives in ``<state dir>/serving/<name>.yaml``: the InferenceService with its status, the
revisions (what each one serves, and why one failed), and the local server's address. Writers
hold a file lock and replace the file atomically, so a reader never sees half a state; each
write bumps ``metadata.resourceVersion``, and ``set_canary_percent`` can be made conditional on
it and on the traffic the writer last set (a rollout's writes are; a human's are not).
``rollout_lock`` is the other lock: one rollout of an InferenceService at a time.
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

from serving.inference_service import (
    MODEL_VERSION_LABEL,
    RolloutLockedError,
    TrafficSpec,
    check_canary_percent,
    check_traffic,
    to_dict,
)


class NotDeployedError(LookupError):
    """No InferenceService of that name has been deployed locally."""


class StateFileError(ValueError):
    """The local state file cannot be read as a state: its message names the file and the fix."""

    def __init__(self, path: Path, problem: str) -> None:
        """Say what is wrong with ``path`` and how to recover."""
        super().__init__(
            f"the local serving state {path} is corrupt ({problem}): delete it and deploy again "
            "with `mlops run`"
        )
        self.path = path


class RevisionFailedError(ValueError):
    """A change would give all traffic to a revision whose model failed to load."""


class ConflictError(RuntimeError):
    """A conditional write found another ``resourceVersion``: someone wrote in between."""


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
        StateFileError: When the file is not a state this module wrote (not YAML, not a
            mapping, a key missing or of the wrong type).
    """
    path = state_path(name, state_dir)
    if not path.exists():
        raise NotDeployedError(
            f"InferenceService {name!r} is not deployed locally (no {path}); run `mlops run` first"
        )
    return _load_state(path)


def _load_state(path: Path) -> dict[str, Any]:
    try:
        state = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise StateFileError(path, f"not YAML: {type(err).__name__}") from err
    check_state(state, path)
    return dict(state)


def _need(value: Any, kind: type | tuple[type, ...], where: str, path: Path) -> Any:
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        names = {dict: "a mapping", list: "a list", str: "a string", int: "a whole number"}
        expected = names.get(kind, "a value") if isinstance(kind, type) else "a string or number"
        found = "nothing" if value is None else f"a {type(value).__name__}"
        raise StateFileError(path, f"{where} must be {expected}, found {found}")
    return value


def check_state(state: Any, path: Path) -> None:
    """Check that ``state`` has every key and type the readers of the state rely on.

    Args:
        state: What the state file holds, as parsed.
        path: The file, for the message.

    Raises:
        StateFileError: Naming the first key that is missing or of the wrong type.
    """
    _need(state, dict, "the file", path)
    isvc = _need(state.get("inferenceService"), dict, "'inferenceService'", path)
    _need(isvc.get("metadata"), dict, "'inferenceService.metadata'", path)
    spec = _need(isvc.get("spec"), dict, "'inferenceService.spec'", path)
    predictor = _need(spec.get("predictor"), dict, "'inferenceService.spec.predictor'", path)
    _need(predictor.get("model"), dict, "'inferenceService.spec.predictor.model'", path)
    canary = predictor.get("canaryTrafficPercent")
    if canary is not None and not 0 <= _need(canary, int, "'canaryTrafficPercent'", path) <= 100:
        raise StateFileError(path, "'canaryTrafficPercent' must be within 0..100")
    revisions = _need(state.get("revisions"), dict, "'revisions'", path)
    for revision, info in revisions.items():
        where = f"'revisions.{revision}'"
        _need(info, dict, where, path)
        _need(info.get("storageUri"), str, f"{where}.storageUri", path)
        _need(info.get("modelVersion"), (str, int), f"{where}.modelVersion", path)
        _need(info.get("template"), dict, f"{where}.template", path)
        if info.get("failed") is not None:
            failed = _need(info["failed"], dict, f"{where}.failed", path)
            _need(failed.get("reason"), str, f"{where}.failed.reason", path)
    status = _need(isvc.get("status"), dict, "'inferenceService.status'", path)
    components = _need(status.get("components"), dict, "'status.components'", path)
    predictor_status = _need(
        components.get("predictor"), dict, "'status.components.predictor'", path
    )
    _need(predictor_status.get("latestCreatedRevision"), str, "'latestCreatedRevision'", path)
    for key in ("latestCreatedRevision", "latestRolledoutRevision", "previousRolledoutRevision"):
        value = predictor_status.get(key)
        if value is not None and value not in revisions:
            raise StateFileError(path, f"'status.components.predictor.{key}' is no revision")
    traffic = _need(predictor_status.get("traffic"), list, "'status...predictor.traffic'", path)
    for index, target in enumerate(traffic):
        where = f"'status...predictor.traffic[{index}]'"
        _need(target, dict, where, path)
        if _need(target.get("revisionName"), str, f"{where}.revisionName", path) not in revisions:
            raise StateFileError(path, f"{where}.revisionName names no revision in 'revisions'")
        _need(target.get("tag"), str, f"{where}.tag", path)
        if not 0 <= _need(target.get("percent"), int, f"{where}.percent", path) <= 100:
            raise StateFileError(path, f"{where}.percent must be within 0..100")
    _need(status.get("conditions", []), list, "'status.conditions'", path)
    if state.get("server") is not None:
        server = _need(state["server"], dict, "'server'", path)
        _need(server.get("url"), str, "'server.url'", path)


def _write_state(state: dict[str, Any], path: Path) -> None:
    metadata = state["inferenceService"]["metadata"]
    metadata["resourceVersion"] = str(int(metadata.get("resourceVersion") or 0) + 1)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(yaml.safe_dump(state, sort_keys=False))
    os.replace(tmp, path)


def _desired(state: dict[str, Any]) -> dict[str, Any]:
    """The recorded InferenceService without its status: what a reconcile starts from."""
    desired = copy.deepcopy(state["inferenceService"])
    desired.pop("status", None)
    return dict(desired)


def _cluster_url(name: str, namespace: str) -> str:
    """The URL KServe's default domain gives the InferenceService (when no local server runs)."""
    return f"http://{name}.{namespace}.example.com"


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
        state = _load_state(path) if path.exists() else None
        return _reconcile(copy.deepcopy(desired), state, path)


def set_canary_percent(
    name: str,
    percent: int | None,
    state_dir: Path,
    *,
    expected: TrafficSpec | None = None,
    if_version: str | None = None,
) -> dict[str, Any]:
    """Change ``canaryTrafficPercent`` (``None`` removes it) and reconcile, as a replace would.

    ``None`` is *promote* (latest takes all traffic), ``0`` is *rollback* (all traffic back to
    the previously rolled-out revision).

    Args:
        name: The InferenceService.
        percent: The new share of the latest revision, or ``None``.
        state_dir: The local state directory.
        expected: The traffic the writer last set; another one found means someone else
            changed it (``None``: write whatever is there, as a human's command does).
        if_version: The ``metadata.resourceVersion`` the writer read (``None``: any).

    Raises:
        ValueError: When ``percent`` is outside 0..100.
        TrafficChangedError: When the traffic is not ``expected`` (nothing is changed).
        ConflictError: When the state is not at ``if_version`` (nothing is changed).
        RevisionFailedError: When the revision that would take all traffic failed to load
            (nothing is changed).
    """
    check_canary_percent(percent)
    path = state_path(name, state_dir)
    with _locked(path):
        state = read_state(name, state_dir)
        check_traffic(state["inferenceService"], expected)
        found = str(state["inferenceService"]["metadata"].get("resourceVersion", ""))
        if if_version is not None and found != if_version:
            raise ConflictError(
                f"InferenceService {name!r} changed since it was read (resourceVersion "
                f"{found}, read at {if_version})"
            )
        desired = _changed(name, percent, state)
        return _reconcile(desired, state, path)


def check_change(name: str, percent: int | None, state_dir: Path) -> None:
    """Refuse, without changing anything, what ``set_canary_percent`` would refuse.

    Raises:
        NotDeployedError: When nothing named ``name`` is deployed.
        RevisionFailedError: When all traffic would go to a revision that failed to load.
    """
    check_canary_percent(percent)
    _changed(name, percent, read_state(name, state_dir))


def _changed(name: str, percent: int | None, state: dict[str, Any]) -> dict[str, Any]:
    """The desired InferenceService with ``percent``; refused if a failed revision gets all."""
    desired = _desired(state)
    predictor = desired["spec"]["predictor"]
    if percent is None:
        predictor.pop("canaryTrafficPercent", None)
    else:
        predictor["canaryTrafficPercent"] = percent
    traffic = _traffic(desired, state["inferenceService"]["status"]["components"]["predictor"])
    for target in traffic:
        failed = state["revisions"][target["revisionName"]].get("failed")
        if target["percent"] == 100 and failed:
            action = {None: "promote", 0: "rollback"}.get(percent, "this change")
            raise RevisionFailedError(
                f"{action} would send all traffic of {name!r} to revision "
                f"{target['revisionName']!r}, which failed to load ({failed['reason']}); "
                "nothing changed. Fix its model, wait for `mlops serve` to load it "
                "(`mlops get` shows READY True), or deploy a new version"
            )
    return desired


def _traffic(desired: dict[str, Any], predictor_status: dict[str, Any]) -> list[dict[str, Any]]:
    """The traffic targets ``desired`` gets, given the revisions in ``predictor_status``.

    As KServe's ksvc reconciler: the 'prev' target is the last rolled-out revision, or, when the
    latest is itself rolled out and a canary is set again (a rollback after a promote), the one
    rolled out before it.
    """
    latest = predictor_status["latestCreatedRevision"]
    canary = desired["spec"]["predictor"].get("canaryTrafficPercent")
    prev = predictor_status.get("latestRolledoutRevision")
    if prev == latest and canary is not None and canary < 100:
        prev = predictor_status.get("previousRolledoutRevision")
    if canary is not None and prev:
        traffic = [_target(latest, "latest", canary, latest=True)]
        if canary < 100:
            traffic.append(_target(prev, "prev", 100 - canary, latest=False))
        return traffic
    return [_target(latest, "latest", 100, latest=True)]


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
    # Carried over (a deploy's new object has none), so _write_state bumps it, never restarts it.
    metadata["resourceVersion"] = previous.get("metadata", {}).get("resourceVersion", "0")

    latest = predictor_status.get("latestCreatedRevision")
    if latest is None or revisions[latest]["template"] != _template(desired):
        latest = f"{name}-predictor-{len(revisions) + 1:05d}"
        model = desired["spec"]["predictor"]["model"]
        revisions[latest] = {
            "storageUri": model["storageUri"],
            "modelVersion": metadata.get("labels", {}).get(MODEL_VERSION_LABEL, ""),
            "createdAt": _now(),
            "template": _template(desired),
        }
        predictor_status["latestCreatedRevision"] = latest
        predictor_status["latestReadyRevision"] = latest

    server = (state or {}).get("server")
    namespace = metadata.get("namespace", "default")
    url = server["url"] if server else _cluster_url(name, namespace)
    # A rollback of the rolled-out latest revision (after a promote, or a canary set to 100)
    # re-points the rolled-out revision at the one before it, as KServe's PropagateStatus
    # does (kserve v0.20.0 pkg/apis/serving/v1beta1/inference_service_status.go): a later
    # deploy then splits with the revision that serves, not with the one rolled back.
    canary = desired["spec"]["predictor"].get("canaryTrafficPercent")
    previous_rolled_out = predictor_status.get("previousRolledoutRevision")
    if (
        predictor_status.get("latestRolledoutRevision") == latest
        and canary is not None
        and canary < 100
        and previous_rolled_out
    ):
        predictor_status["latestRolledoutRevision"] = previous_rolled_out
    # A failed revision keeps its share: moving it to the other revision would roll out a
    # canary nobody promoted. Requests routed to it get 503 until the server loads it.
    traffic = _traffic(desired, predictor_status)
    # A revision is rolled out once it takes all traffic (a first deploy or a promote).
    rolled_out = predictor_status.get("latestRolledoutRevision")
    if traffic[0]["latestRevision"] and traffic[0]["percent"] == 100 and rolled_out != latest:
        if rolled_out is not None:
            predictor_status["previousRolledoutRevision"] = rolled_out
        predictor_status["latestRolledoutRevision"] = latest
    ready: dict[str, Any] = {"type": "Ready", "status": "True", "lastTransitionTime": _now()}
    failed = [
        (t["revisionName"], revisions[t["revisionName"]]["failed"]["reason"])
        for t in traffic
        if revisions[t["revisionName"]].get("failed")
    ]
    if failed:
        ready.update(
            status="False",
            reason="RevisionFailed",
            message="; ".join(f"Revision {rev!r} failed to load: {why}" for rev, why in failed),
        )
    failed_names = {rev for rev, _ in failed}
    if latest in failed_names:
        # As Knative: the latest failed revision is not the latest ready one.
        ready_now = next(
            (t["revisionName"] for t in traffic if t["revisionName"] not in failed_names), None
        )
        if ready_now:
            predictor_status["latestReadyRevision"] = ready_now
        else:
            predictor_status.pop("latestReadyRevision", None)
    else:
        predictor_status["latestReadyRevision"] = latest
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
    """Record that ``revision`` could not be loaded (its share of traffic stays).

    The model server calls this when a revision's model fails to load (a missing file, a
    sha256 mismatch, the store unreachable). The state says why in ``revisions.<name>.failed``
    and in the Ready condition; requests routed to it get 503 until the server loads it.

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
        desired = _desired(state)
        # A status change, not a spec change: the generation stays, as in the cluster.
        return _reconcile(desired, state, path, spec_changed=False)


def clear_revision_failure(name: str, revision: str, state_dir: Path) -> dict[str, Any]:
    """Record that ``revision`` loaded after all: drop its failure and the stale reason.

    Args:
        name: The InferenceService name.
        revision: The revision that now loads.
        state_dir: The local state directory.

    Returns:
        The InferenceService with its new status (unchanged when nothing was recorded).

    Raises:
        NotDeployedError: When nothing named ``name`` is deployed.
    """
    path = state_path(name, state_dir)
    with _locked(path):
        state = read_state(name, state_dir)
        info = state["revisions"].get(revision)
        if not info or not info.pop("failed", None):
            return dict(state["inferenceService"])
        desired = _desired(state)
        return _reconcile(desired, state, path, spec_changed=False)


def annotate(name: str, key: str, value: str, state_dir: Path) -> dict[str, Any]:
    """Set one annotation on the recorded InferenceService (e.g. a rollout's outcome).

    Metadata only, as ``kubectl annotate``: no new revision, traffic unchanged.

    Raises:
        NotDeployedError: When nothing named ``name`` is deployed.
    """
    path = state_path(name, state_dir)
    with _locked(path):
        state = read_state(name, state_dir)
        metadata = state["inferenceService"]["metadata"]
        metadata["annotations"] = {**(metadata.get("annotations") or {}), key: value}
        _write_state(state, path)
        return dict(state["inferenceService"])


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
        except (NotDeployedError, StateFileError):  # nothing that can be read points at us
            return
        if state.get("server", {}).get("url") != url:
            return
        del state["server"]
        isvc = state["inferenceService"]
        namespace = isvc.get("metadata", {}).get("namespace", "default")
        _set_urls(isvc.setdefault("status", {}), name, _cluster_url(name, namespace), local=False)
        _write_state(state, path)


@contextlib.contextmanager
def rollout_lock(name: str, state_dir: Path) -> Iterator[None]:
    """Hold the one rollout lock of ``name`` while the block runs; refuse if another holds it.

    A ``flock`` on ``<state dir>/serving/<name>.rollout.lock``: the kernel releases it when the
    holder exits, however it exits, so a killed rollout never leaves a stale lock. The file
    names the holder (pid, start time) for the message.

    Raises:
        RolloutLockedError: When another process holds the lock (nothing is changed).
    """
    path = state_path(name, state_dir).with_suffix(".rollout.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read(200).strip() or "another process"
            raise RolloutLockedError(
                f"another rollout of {name!r} is running ({holder}): the lock {path} is held; "
                "wait for it to end, or stop it (Ctrl-C, or `mlops promote` / `mlops rollback`)"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}, started {_now()}")
        lock.flush()
        try:
            yield
        finally:
            lock.truncate(0)


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
