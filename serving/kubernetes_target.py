"""The ``kubernetes`` deploy target: apply an InferenceService with ``KServeClient`` and wait.

The first deploy ``create``s the InferenceService; later ones ``replace`` it, because KServe's
``patch`` (a JSON merge patch) cannot remove ``canaryTrafficPercent`` (kserve/kserve
``python/kserve/kserve/api/kserve_client.py``). After each write this waits for the generation
the API server returned (``wait_isvc_ready(..., expected_generation=...)``, KServe >= 0.17), so
a Ready condition left over from the previous generation is never mistaken for success.

Nothing here deletes anything: when a new revision fails, Knative keeps routing to the revision
that served before, and the error says why.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kserve import KServeClient, V1beta1InferenceService

_MESSAGE = re.compile(r'"message"\s*:\s*"((?:[^"\\]|\\.)*)"')
_STATUS = re.compile(r"\((\d{3})\)\s*Reason:\s*([^\n]*)")


def _client() -> KServeClient:
    """A ``KServeClient`` on the current kubeconfig, or the pod's ServiceAccount in a cluster."""
    from kserve import KServeClient
    from kubernetes.config import ConfigException

    try:
        return KServeClient()
    except (ConfigException, OSError) as err:
        raise RuntimeError(
            f"no Kubernetes cluster configured ({err}): set KUBECONFIG or run `make kind-up`"
        ) from err


def _api_reason(err: Exception) -> str:
    """The API server's one-line reason inside the error ``KServeClient`` raises."""
    text = str(err)
    found = _MESSAGE.search(text)
    if found:
        return str(json.loads(f'"{found.group(1)}"'))
    status = _STATUS.search(text)
    if status:
        return f"HTTP {status.group(1)} {status.group(2).strip()}"
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def _is_not_found(err: Exception) -> bool:
    return "(404)" in str(err)


def _ready_reason(isvc: dict[str, Any]) -> str:
    """Why the InferenceService is not Ready, from its status conditions."""
    for condition in isvc.get("status", {}).get("conditions", []):
        if condition.get("type") == "Ready":
            parts = [condition.get("reason", ""), condition.get("message", "")]
            return ": ".join(p for p in parts if p) or f"Ready={condition.get('status')}"
    return "no Ready condition reported yet"


def get(name: str, namespace: str) -> dict[str, Any]:
    """Return the InferenceService as the API returns it (camelCase dict, with status).

    Raises:
        LookupError: When there is no InferenceService ``name`` in ``namespace``.
        RuntimeError: When the cluster cannot be reached or refuses the request.
    """
    return _get(_client(), name, namespace)


def _get(client: KServeClient, name: str, namespace: str) -> dict[str, Any]:
    try:
        return dict(client.get(name, namespace=namespace))
    except RuntimeError as err:
        if _is_not_found(err):
            raise LookupError(
                f"InferenceService {name!r} not found in namespace {namespace!r}: "
                "deploy a model first (`mlops submit`), or pass the right -n NAMESPACE"
            ) from err
        raise RuntimeError(
            f"could not read InferenceService {namespace}/{name}: {_api_reason(err)}"
        ) from err


def exists(name: str, namespace: str) -> bool:
    """Whether the InferenceService ``name`` exists in ``namespace``."""
    return _exists(_client(), name, namespace)


def _exists(client: KServeClient, name: str, namespace: str) -> bool:
    try:
        _get(client, name, namespace)
    except LookupError:
        return False
    return True


def _write_and_wait(
    client: KServeClient, isvc: V1beta1InferenceService, create: bool, timeout_s: int
) -> dict[str, Any]:
    name, namespace = isvc.metadata.name, isvc.metadata.namespace
    verb = "create" if create else "replace"
    try:
        if create:
            written = client.create(isvc, namespace=namespace)
        else:
            written = client.replace(name, isvc, namespace=namespace)
    except RuntimeError as err:
        raise RuntimeError(
            f"could not {verb} InferenceService {namespace}/{name}: {_api_reason(err)}"
        ) from err
    generation = int(written["metadata"]["generation"])
    try:
        client.wait_isvc_ready(
            name,
            namespace=namespace,
            timeout_seconds=timeout_s,
            expected_generation=generation,
        )
    except RuntimeError as err:
        try:
            reason = _ready_reason(dict(client.get(name, namespace=namespace)))
        except RuntimeError:
            reason = _api_reason(err)
        raise RuntimeError(
            f"InferenceService {namespace}/{name} generation {generation} was not Ready within "
            f"{timeout_s}s ({reason}); the previously rolled-out revision keeps serving: "
            f"see `kubectl describe isvc {name} -n {namespace}`"
        ) from err
    return _get(client, name, namespace)


def apply(
    isvc: V1beta1InferenceService, timeout_s: int, *, create: bool | None = None
) -> dict[str, Any]:
    """Create or replace ``isvc``, wait until its new generation is Ready, return it.

    Args:
        isvc: The InferenceService to apply (its metadata names the namespace).
        timeout_s: Seconds to wait for the new generation to become Ready.
        create: Whether it is new, when the caller already knows (saves a lookup);
            ``None`` looks it up.

    Returns:
        The InferenceService as the API returns it after it became Ready.

    Raises:
        RuntimeError: When the API refuses the object or it does not become Ready in time.
    """
    client = _client()
    if create is None:
        create = not _exists(client, isvc.metadata.name, isvc.metadata.namespace)
    return _write_and_wait(client, isvc, create, timeout_s)


def set_canary_percent(
    name: str, namespace: str, percent: int | None, timeout_s: int
) -> dict[str, Any]:
    """Set ``canaryTrafficPercent`` of the running InferenceService and wait for it.

    Args:
        name: The InferenceService.
        namespace: Its namespace.
        percent: ``None`` promotes (the field is removed: latest gets 100%); ``0`` rolls back
            to the previously rolled-out revision; anything else moves the split.
        timeout_s: Seconds to wait for the new generation to become Ready.

    Returns:
        The InferenceService as the API returns it afterwards.

    Raises:
        ValueError: When ``percent`` is outside 0..100.
        LookupError: When the InferenceService does not exist.
        RuntimeError: When the API refuses the change or it does not become Ready in time.
    """
    from serving.inference_service import check_canary_percent, from_dict

    check_canary_percent(percent)
    client = _client()
    isvc = from_dict(_get(client, name, namespace))
    # The server owns status and managedFields; resourceVersion stays, so a concurrent change
    # makes the replace fail (409) instead of being overwritten.
    isvc.status = None
    isvc.metadata.managed_fields = None
    isvc.spec.predictor.canary_traffic_percent = percent
    return _write_and_wait(client, isvc, create=False, timeout_s=timeout_s)
