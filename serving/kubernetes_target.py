"""The ``kubernetes`` deploy target: apply an InferenceService with ``KServeClient`` and wait.

The first deploy ``create``s the InferenceService; later ones ``replace`` it, because KServe's
``patch`` (a JSON merge patch) cannot remove ``canaryTrafficPercent`` (kserve/kserve
``python/kserve/kserve/api/kserve_client.py``).

The wait does not trust ``status.observedGeneration``: in Knative mode KServe copies it from the
Knative Service (``PropagateStatus`` in ``pkg/apis/serving/v1beta1/inference_service_status.go``),
whose generation moves only when the Knative Service changes: not at all when KServe ignores
``canaryTrafficPercent`` because nothing has rolled out yet, and once more than the
InferenceService's when KServe re-points ``latestRolledoutRevision`` after a rollback
(``createKnativeService`` in ``.../reconcilers/knative/ksvc_reconciler.go``). So the wait checks
what the write must produce instead: see :func:`rollout_missing`.

Transient API errors (no connection, 5xx, 429) are retried by the kubernetes client's urllib3
pool (:func:`api_retry`); a replace refused with 409 (someone wrote in between) is redone on a
fresh read. Nothing else is retried: a refused object or a revision that never gets Ready fails
at once with one line. Nothing here deletes anything: when a new revision fails, Knative keeps
routing to the revision that served before.

The model version of each Knative Revision in the traffic is read from the Revision itself
(:func:`revision_versions`): in Knative mode KServe builds the Knative Service's
``spec.template.metadata`` from the InferenceService's labels and annotations
(``buildObjectMeta`` in ``pkg/controller/v1beta1/inferenceservice/components/predictor.go``,
less inferenceservice-config's ``serviceLabelDisallowedList``, applied by
``createKnativeService``) and adds the storage URI as an annotation
(``addStorageInitializerAnnotations``); Knative creates every Revision with that metadata
(``MakeRevision`` in knative/serving ``pkg/reconciler/configuration/resources/revision.go``).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kserve import KServeClient, V1beta1InferenceService
    from urllib3.util.retry import Retry

    from serving.inference_service import TrafficSpec

# urllib3 retries of one API request: 0, 1, 2, 4, 8 s apart (about 15 s in all), enough for an
# API server or admission webhook that restarts; Retry-After of a 429/503 is honoured.
RETRIES = 5
BACKOFF_FACTOR_S = 0.5
TRANSIENT_STATUSES = (429, 500, 502, 503, 504)
# How often the wait reads the InferenceService.
POLL_INTERVAL_S = 5.0
# Replace attempts when the object changed between our read and our write (409).
CONFLICT_ATTEMPTS = 3
# KServe's constants.StorageInitializerSourceUriInternalAnnotationKey: the predictor's
# storageUri, on the Knative Service's template and so on every Revision.
STORAGE_URI_ANNOTATION = "internal.serving.kserve.io/storage-initializer-sourceuri"
KNATIVE_GROUP = "serving.knative.dev"
KNATIVE_VERSION = "v1"


class KubernetesApiError(RuntimeError):
    """An API request that failed, in one line; ``status`` is the HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


def api_retry() -> Retry:
    """The urllib3 retry policy of every API request.

    POST is included: a create the server did process answers 409 on the retry, which
    :func:`apply` recognises as its own object.
    """
    from urllib3.util.retry import Retry

    return Retry(
        total=RETRIES,
        backoff_factor=BACKOFF_FACTOR_S,
        status_forcelist=TRANSIENT_STATUSES,
        allowed_methods=Retry.DEFAULT_ALLOWED_METHODS | {"POST"},
        raise_on_status=False,  # the last answer becomes an ApiException with its message
    )


def _client() -> KServeClient:
    """A ``KServeClient`` on ``KUBECONFIG`` (or the pod's ServiceAccount) with :func:`api_retry`."""
    from kserve import KServeClient
    from kubernetes import client as k8s
    from kubernetes.config import ConfigException

    try:
        # The kubernetes client reads KUBECONFIG once, when it is imported: read it now.
        kserve = KServeClient(config_file=os.environ.get("KUBECONFIG") or None)
    except (ConfigException, OSError) as err:
        raise RuntimeError(
            f"no Kubernetes cluster configured ({err}): set KUBECONFIG or run `make kind-up`"
        ) from err
    configuration = k8s.Configuration.get_default_copy()
    configuration.retries = api_retry()
    kserve.api_instance = k8s.CustomObjectsApi(k8s.ApiClient(configuration))
    return kserve


def _request(
    action: str,
    namespace: str,
    name: str,
    call: Callable[[], Any],
    kind: str = "InferenceService",
) -> Any:
    """Run one API call; its failure becomes a one-line ``KubernetesApiError``."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    what = f"could not {action} {kind} {namespace}/{name}"
    try:
        return call()
    except ApiException as err:  # a CustomObjectsApi call made directly
        raise KubernetesApiError(f"{what}: {_api_reason(err, err)}", err.status) from err
    except RuntimeError as err:
        # KServeClient raises RuntimeError while handling the ApiException: its context.
        api = err.__context__ if isinstance(err.__context__, ApiException) else None
        status = api.status if api is not None else None
        raise KubernetesApiError(f"{what}: {_api_reason(api, err)}", status) from err
    except HTTPError as err:
        cause = getattr(err, "reason", None) or err
        text = str(cause).split(": ", 1)[-1] if ": " in str(cause) else str(cause)
        raise KubernetesApiError(
            f"{what}: the Kubernetes API did not answer after {RETRIES} retries ({text})", None
        ) from err


def _api_reason(api: Any, err: Exception) -> str:
    """The API server's message (from its Status body), else the HTTP status line."""
    if api is not None:
        try:
            message = json.loads(api.body).get("message")
        except (TypeError, ValueError, AttributeError):
            message = None
        return str(message) if message else f"HTTP {api.status} {api.reason}"
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def get(name: str, namespace: str) -> dict[str, Any]:
    """Return the InferenceService as the API returns it (camelCase dict, with status).

    Raises:
        LookupError: When there is no InferenceService ``name`` in ``namespace`` (HTTP 404).
        RuntimeError: When the cluster cannot be reached or refuses the request.
    """
    return _get(_client(), name, namespace)


def _get(client: KServeClient, name: str, namespace: str) -> dict[str, Any]:
    try:
        return dict(_request("read", namespace, name, lambda: client.get(name, namespace)))
    except KubernetesApiError as err:
        if err.status == 404:
            raise LookupError(
                f"InferenceService {name!r} not found in namespace {namespace!r}: "
                "deploy a model first (`mlops submit`), or pass the right -n NAMESPACE"
            ) from err
        raise


def exists(name: str, namespace: str) -> bool:
    """Whether the InferenceService ``name`` exists in ``namespace``.

    Only a 404 means absent: a refused or failed lookup raises, so it never leads to a create.

    Raises:
        RuntimeError: When the lookup fails for any other reason (403, 5xx, no answer).
    """
    return _exists(_client(), name, namespace)


def _exists(client: KServeClient, name: str, namespace: str) -> bool:
    try:
        _get(client, name, namespace)
    except LookupError:
        return False
    return True


def revision_versions(namespace: str, revisions: Iterable[str]) -> dict[str, str]:
    """The model version of each Knative Revision named in ``revisions``, where it is known.

    Read from the Revision's ``mlops.example.com/model-version`` label (the InferenceService's,
    which KServe propagates), else from its storage URI annotation (when a cluster's
    ``serviceLabelDisallowedList`` holds the label back). A Revision that no longer exists (404)
    or names no version is left out: unknown.

    Args:
        namespace: The InferenceService's namespace.
        revisions: Revision names, as the traffic status names them (``revisionName``).

    Returns:
        Model version (a decimal string) per revision name.

    Raises:
        RuntimeError: When a Revision cannot be read (refused, 5xx after the retries, no answer).
    """
    names = sorted(set(revisions))
    if not names:
        return {}
    api = _client().api_instance
    versions: dict[str, str] = {}
    for name in names:
        read = functools.partial(
            api.get_namespaced_custom_object,
            KNATIVE_GROUP,
            KNATIVE_VERSION,
            namespace,
            "revisions",
            name,
        )
        try:
            revision = _request("read", namespace, name, read, kind="Knative Revision")
        except KubernetesApiError as err:
            if err.status == 404:
                continue
            raise
        version = version_of_revision(dict(revision))
        if version is not None:
            versions[name] = version
    return versions


def version_of_revision(revision: dict[str, Any]) -> str | None:
    """The model version a Knative Revision serves: its version label, else its storage URI.

    Returns:
        The version as a decimal string, or None when the Revision names none.
    """
    from mlops.store import split_version_uri
    from serving.inference_service import MODEL_VERSION_LABEL

    metadata = revision.get("metadata") or {}
    label = str((metadata.get("labels") or {}).get(MODEL_VERSION_LABEL, ""))
    if label.isascii() and label.isdigit():
        return str(int(label))
    uri = (metadata.get("annotations") or {}).get(STORAGE_URI_ANNOTATION)
    try:
        return str(split_version_uri(str(uri))[2]) if uri else None
    except ValueError:  # not a store version URI: some other model's revision
        return None


def rollout_missing(
    isvc: dict[str, Any], written: dict[str, Any], before: dict[str, Any] | None
) -> str | None:
    """What the write ``written`` must still produce in ``isvc``'s status; None when done.

    KServe's Knative mode has it done when: a new revision was created if the template changed
    (the spec apart from ``canaryTrafficPercent``; ``before`` is the object before the write,
    None for a create); the latest ready revision is the latest created; the traffic is the
    split ``createKnativeService`` derives from ``canaryTrafficPercent`` and the status's
    ``latestRolledoutRevision`` (latest 100% while nothing has rolled out); Ready is True.

    Args:
        isvc: The InferenceService as read now.
        written: The object the API returned for the write.
        before: The object as read before the write, or None.

    Returns:
        The first requirement not met yet, in words, or None.
    """
    status = isvc.get("status", {})
    predictor = status.get("components", {}).get("predictor", {})
    created = predictor.get("latestCreatedRevision", "")
    ready_revision = predictor.get("latestReadyRevision", "")
    if _template(written) != (_template(before) if before else None):
        old = (before or {}).get("status", {}).get("components", {}).get("predictor", {})
        if not created or created == old.get("latestCreatedRevision"):
            return f"no new revision created yet (latest created: {created or 'none'})"
    if not created or ready_revision != created:
        return f"revision {created or '(none yet)'} is not ready"
    expected = _expected_traffic(written, predictor.get("latestRolledoutRevision", ""), created)
    actual = sorted(
        (bool(t.get("latestRevision")), t.get("revisionName", ""), t.get("percent") or 0)
        for t in predictor.get("traffic", [])
    )
    if actual != expected:
        return f"traffic is {_describe(actual)}, waiting for {_describe(expected)}"
    ready = _condition(status, "Ready")
    if ready.get("status") != "True":
        return "Ready is not True"
    return None


def _template(isvc: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(isvc.get("spec", {}))
    spec.get("predictor", {}).pop("canaryTrafficPercent", None)
    return dict(spec)


def _expected_traffic(
    written: dict[str, Any], rolled_out: str, latest: str
) -> list[tuple[bool, str, int]]:
    percent = written["spec"]["predictor"].get("canaryTrafficPercent")
    if percent is None or not rolled_out:
        return [(True, latest, 100)]
    split = [(True, latest, int(percent))]
    if percent < 100:
        split.append((False, rolled_out, 100 - int(percent)))
    return sorted(split)


def _describe(traffic: list[tuple[bool, str, int]]) -> str:
    parts = [f"{name or '?'}{' (latest)' if latest else ''} {p}%" for latest, name, p in traffic]
    return ", ".join(parts) or "none"


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c.get("type") == kind), {})


def _not_ready_reason(isvc: dict[str, Any]) -> str:
    """The predictor's (else the InferenceService's) condition that is not True, with why."""
    status = isvc.get("status", {})
    for kind in ("PredictorReady", "Ready"):
        condition = _condition(status, kind)
        if condition and condition.get("status") != "True":
            why = ": ".join(p for p in (condition.get("reason"), condition.get("message")) if p)
            return f"{kind} {condition.get('status')}" + (f" ({why})" if why else "")
    return ""


def _wait(
    client: KServeClient, written: dict[str, Any], before: dict[str, Any] | None, timeout_s: float
) -> dict[str, Any]:
    """Poll every ``POLL_INTERVAL_S`` until :func:`rollout_missing` is None or ``timeout_s``."""
    name, namespace = written["metadata"]["name"], written["metadata"]["namespace"]
    deadline = time.monotonic() + timeout_s
    while True:
        isvc = _get(client, name, namespace)
        missing = rollout_missing(isvc, written, before)
        if missing is None:
            return isvc
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            reason = "; ".join(p for p in (missing, _not_ready_reason(isvc)) if p)
            raise RuntimeError(
                f"InferenceService {namespace}/{name} was not rolled out within {timeout_s}s: "
                f"{reason}; the previously rolled-out revision keeps serving: see "
                f"`kubectl describe isvc {name} -n {namespace}`"
            )
        time.sleep(min(POLL_INTERVAL_S, remaining))


def _create(client: KServeClient, isvc: V1beta1InferenceService) -> dict[str, Any]:
    from serving.inference_service import to_dict

    name, namespace = isvc.metadata.name, isvc.metadata.namespace
    try:
        return dict(_request("create", namespace, name, lambda: client.create(isvc, namespace)))
    except KubernetesApiError as err:
        if err.status != 409:
            raise
        # A retried create whose first attempt went through finds its own object.
        current = _get(client, name, namespace)
        if not _contains(current, to_dict(isvc)):
            raise
        return current


def _contains(stored: Any, wanted: Any) -> bool:
    """Whether every field of ``wanted`` has the same value in ``stored`` (defaults may add)."""
    if isinstance(wanted, dict):
        return isinstance(stored, dict) and all(
            _contains(stored.get(k), v) for k, v in wanted.items()
        )
    return bool(stored == wanted)


def _replace(
    client: KServeClient,
    name: str,
    namespace: str,
    build: Callable[[dict[str, Any]], V1beta1InferenceService],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Replace with ``build(current)`` on a fresh read; return (first read, written).

    A 409 means the object changed between the read and the write: read again and rebuild,
    as client-go's ``RetryOnConflict`` does (urllib3 cannot, it would resend the stale body).
    """
    first: dict[str, Any] | None = None
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        current = _get(client, name, namespace)
        first = first or current
        body = build(current)
        try:
            written = _request(
                "replace", namespace, name, functools.partial(client.replace, name, body, namespace)
            )
            return first, dict(written)
        except KubernetesApiError as err:
            if err.status != 409 or attempt == CONFLICT_ATTEMPTS:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def apply(
    isvc: V1beta1InferenceService, timeout_s: int, *, create: bool | None = None
) -> dict[str, Any]:
    """Create or replace ``isvc``, wait until its rollout is done, return it.

    Args:
        isvc: The InferenceService to apply (its metadata names the namespace); not modified.
        timeout_s: Seconds to wait for the rollout (see :func:`rollout_missing`).
        create: Whether it is new, when the caller already knows (saves a lookup);
            ``None`` looks it up.

    Returns:
        The InferenceService as the API returned it when the rollout was done.

    Raises:
        RuntimeError: When the API refuses the object or the rollout is not done in time.
    """
    client = _client()
    name, namespace = isvc.metadata.name, isvc.metadata.namespace
    if create is None:
        create = not _exists(client, name, namespace)
    if create:
        return _wait(client, _create(client, isvc), None, timeout_s)

    def on(current: dict[str, Any]) -> V1beta1InferenceService:
        body = copy.deepcopy(isvc)
        body.metadata.resource_version = current["metadata"]["resourceVersion"]
        return body

    before, written = _replace(client, name, namespace, on)
    return _wait(client, written, before, timeout_s)


def set_canary_percent(
    name: str,
    namespace: str,
    percent: int | None,
    timeout_s: int,
    expected: TrafficSpec | None = None,
) -> dict[str, Any]:
    """Set ``canaryTrafficPercent`` of the running InferenceService and wait for it.

    The replace carries the ``resourceVersion`` of the read it was built from, so it is a
    conditional write; with ``expected`` it is also refused when the spec read is not the
    traffic the writer last set (a rollout's writes: a human's change is never undone).

    Args:
        name: The InferenceService.
        namespace: Its namespace.
        percent: ``None`` promotes (the field is removed: latest gets 100%); ``0`` rolls back
            to the previously rolled-out revision; anything else moves the split.
        timeout_s: Seconds to wait for the new traffic split.
        expected: The traffic the writer last set (``None``: write over whatever is there).

    Returns:
        The InferenceService as the API returns it afterwards.

    Raises:
        ValueError: When ``percent`` is outside 0..100.
        LookupError: When the InferenceService does not exist.
        TrafficChangedError: When the spec is not ``expected`` (nothing is written).
        RuntimeError: When the API refuses the change, it is not done in time, or a canary
            share is asked for while nothing has rolled out (KServe would ignore it).
    """
    from serving.inference_service import check_canary_percent, check_traffic, from_dict

    check_canary_percent(percent)
    client = _client()

    def moved(current: dict[str, Any]) -> V1beta1InferenceService:
        check_traffic(current, expected)
        predictor = current.get("status", {}).get("components", {}).get("predictor", {})
        if percent is not None and not predictor.get("latestRolledoutRevision"):
            # createKnativeService splits only once a revision has rolled out: the share would
            # be ignored and the wait would run out its whole timeout for nothing.
            raise RuntimeError(
                f"InferenceService {namespace}/{name} has no rolled-out revision yet "
                f"({_not_ready_reason(current) or 'its first revision is not ready'}): KServe "
                f"ignores canaryTrafficPercent {percent} until one took all traffic; nothing "
                "changed. Wait for `kubectl get isvc` to show READY True, then retry"
            )
        body = from_dict(current)
        # The server owns status and managedFields; resourceVersion stays, so a concurrent
        # change makes the replace fail (409) and it is redone on a fresh read.
        body.status = None
        body.metadata.managed_fields = None
        body.spec.predictor.canary_traffic_percent = percent
        return body

    before, written = _replace(client, name, namespace, moved)
    return _wait(client, written, before, timeout_s)


def record_event(
    name: str, namespace: str, reason: str, message: str, warning: bool, at: datetime
) -> None:
    """Create a Kubernetes Event about the InferenceService ``name`` (what a rollout decided).

    An Event, not an annotation: KServe copies the InferenceService's annotations onto the
    Knative template, so an annotation would start a new revision.

    Raises:
        RuntimeError: When the API refuses the Event (``events`` ``create`` is in the Role).
    """
    from kserve import constants
    from kubernetes import client as k8s

    event = k8s.CoreV1Event(
        metadata=k8s.V1ObjectMeta(generate_name=f"{name}-rollout-", namespace=namespace),
        involved_object=k8s.V1ObjectReference(
            api_version=constants.KSERVE_V1BETA1,
            kind=constants.KSERVE_KIND_INFERENCESERVICE,
            name=name,
            namespace=namespace,
        ),
        reason=reason,
        # Events are meant to be short; the full outcome is in the JSON log and MLflow.
        message=message[:1024],
        type="Warning" if warning else "Normal",
        first_timestamp=at,
        last_timestamp=at,
        count=1,
        source=k8s.V1EventSource(component="mlops-rollout"),
    )
    api = k8s.CoreV1Api(_client().api_instance.api_client)
    _request(
        "record an Event on",
        namespace,
        name,
        lambda: api.create_namespaced_event(namespace, event),
    )
