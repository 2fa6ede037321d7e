"""The rollout's ``coordination.k8s.io`` Lease: one owner of an InferenceService's rollout.

A Lease per InferenceService (``<name>-rollout`` in its namespace), not an annotation: KServe
copies the InferenceService's annotations onto the Knative revision template
(``buildObjectMeta`` in kserve v0.20.0 ``pkg/controller/v1beta1/inferenceservice/components/
predictor.go``), so an annotation would start a new revision. Taken with a create, or with a
``resourceVersion``-conditional replace of a Lease whose holder stopped renewing it (the API
server's optimistic concurrency: of two takers one gets 409); released with a delete conditional
on the ``resourceVersion`` read. Requests go through ``kubernetes_target``'s client and its
one-line errors. RBAC: ``get``, ``create``, ``update``, ``delete`` on ``leases``.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

from serving.kubernetes_target import KubernetesApiError, _client, _request

# The rollout's Lease: held while a rollout runs, renewed every third of its duration, so a
# rollout that died (its pod evicted, the laptop closed) frees the InferenceService within
# LEASE_DURATION_S.
LEASE_DURATION_S = 60
LEASE_SUFFIX = "-rollout"


class LeaseLostError(RuntimeError):
    """The rollout's Lease was taken over or deleted: another owner may be moving traffic."""


def lease_name(name: str) -> str:
    """The ``coordination.k8s.io`` Lease that says who rolls out InferenceService ``name``."""
    return f"{name}{LEASE_SUFFIX}"


def _micro_time(moment: datetime) -> str:
    # MicroTime is RFC 3339 with exactly six fractional digits (k8s.io/apimachinery
    # pkg/apis/meta/v1/micro_time.go, RFC3339Micro); datetime.isoformat drops them at .000000.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _lease_api() -> Any:
    from kubernetes import client as k8s

    return k8s.CoordinationV1Api(_client().api_instance.api_client)


def _lease_body(
    name: str, namespace: str, holder: str, now: datetime, acquired: datetime, version: str | None
) -> Any:
    from kubernetes import client as k8s

    return k8s.V1Lease(
        metadata=k8s.V1ObjectMeta(
            name=lease_name(name),
            namespace=namespace,
            resource_version=version,
            labels={"serving.kserve.io/inferenceservice": name},
        ),
        spec=k8s.V1LeaseSpec(
            holder_identity=holder,
            lease_duration_seconds=LEASE_DURATION_S,
            acquire_time=_micro_time(acquired),
            renew_time=_micro_time(now),
        ),
    )


def _lease_expired(lease: Any, now: datetime) -> bool:
    spec = lease.spec
    renewed = spec.renew_time or spec.acquire_time
    if not spec.holder_identity or renewed is None:
        return True
    duration = spec.lease_duration_seconds or LEASE_DURATION_S
    return bool((now - renewed).total_seconds() > duration)


def acquire_lease(name: str, namespace: str, holder: str) -> str:
    """Take the rollout Lease of ``name`` for ``holder``; its ``resourceVersion``.

    A create, or, when the Lease exists but its holder stopped renewing it, a replace on the
    ``resourceVersion`` read: of two rollouts taking an expired Lease at once, one gets a 409.

    Raises:
        RolloutLockedError: When another holder's Lease is current (nothing is changed).
        RuntimeError: When the API refuses the Lease (``leases`` verbs missing from the Role).
    """
    from serving.inference_service import RolloutLockedError

    api, lease = _lease_api(), lease_name(name)
    now = datetime.now(UTC)
    body = _lease_body(name, namespace, holder, now, now, None)
    create = functools.partial(api.create_namespaced_lease, namespace, body)
    try:
        created = _request("create", namespace, lease, create, kind="Lease")
        return str(created.metadata.resource_version)
    except KubernetesApiError as err:
        if err.status != 409:
            raise
    read = functools.partial(api.read_namespaced_lease, lease, namespace)
    current = _request("read", namespace, lease, read, kind="Lease")
    if current.spec.holder_identity != holder and not _lease_expired(current, now):
        since = current.spec.acquire_time
        raise RolloutLockedError(
            f"another rollout of {namespace}/{name} is running: Lease {lease} is held by "
            f"{current.spec.holder_identity} (since {since}, renewed {current.spec.renew_time});"
            " wait for it to end, or stop it with `mlops promote` / `mlops rollback`"
        )
    body = _lease_body(name, namespace, holder, now, now, current.metadata.resource_version)
    replace = functools.partial(api.replace_namespaced_lease, lease, namespace, body)
    try:
        taken = _request("take over", namespace, lease, replace, kind="Lease")
    except KubernetesApiError as err:
        if err.status == 409:
            raise RolloutLockedError(
                f"another rollout of {namespace}/{name} took Lease {lease} at the same moment"
            ) from err
        raise
    return str(taken.metadata.resource_version)


def _read_lease(api: Any, lease: str, namespace: str) -> Any | None:
    """The Lease as the API has it now, or ``None`` when it is gone (404)."""
    read = functools.partial(api.read_namespaced_lease, lease, namespace)
    try:
        return _request("read", namespace, lease, read, kind="Lease")
    except KubernetesApiError as err:
        if err.status == 404:
            return None
        raise


def renew_lease(name: str, namespace: str, holder: str) -> str:
    """Renew ``holder``'s rollout Lease of ``name`` (a conditional replace); its new version.

    Raises:
        LeaseLostError: When the Lease is gone or has another holder.
        RuntimeError: When the API fails.
    """
    api, lease = _lease_api(), lease_name(name)
    current = _read_lease(api, lease, namespace)
    if current is None:
        raise LeaseLostError(f"Lease {namespace}/{lease} was deleted")
    if current.spec.holder_identity != holder:
        raise LeaseLostError(
            f"Lease {namespace}/{lease} is now held by {current.spec.holder_identity}"
        )
    acquired = current.spec.acquire_time or datetime.now(UTC)
    body = _lease_body(
        name, namespace, holder, datetime.now(UTC), acquired, current.metadata.resource_version
    )
    replace = functools.partial(api.replace_namespaced_lease, lease, namespace, body)
    try:
        renewed = _request("renew", namespace, lease, replace, kind="Lease")
    except KubernetesApiError as err:
        if err.status == 409:
            raise LeaseLostError(f"Lease {namespace}/{lease} was changed by another") from err
        raise
    return str(renewed.metadata.resource_version)


def release_lease(name: str, namespace: str, holder: str) -> None:
    """Delete ``holder``'s rollout Lease of ``name`` (only if it is still ``holder``'s).

    The delete is conditional on the ``resourceVersion`` read, so a Lease another rollout took
    meanwhile stays.
    """
    from kubernetes import client as k8s

    api, lease = _lease_api(), lease_name(name)
    current = _read_lease(api, lease, namespace)
    if current is None or current.spec.holder_identity != holder:
        return
    options = k8s.V1DeleteOptions(
        preconditions=k8s.V1Preconditions(resource_version=current.metadata.resource_version)
    )
    delete = functools.partial(api.delete_namespaced_lease, lease, namespace, body=options)
    try:
        _request("release", namespace, lease, delete, kind="Lease")
    except KubernetesApiError as err:
        if err.status not in (404, 409):
            raise
