"""The ``kubernetes`` rollout target: the canary's signals from the payload sink, via the API.

The signals: KServe's payload logger posts every request and response of both revisions to the
payload sink (``serving.payload_sink``) in the model's namespace, which counts them per revision
in the ``mlops_*`` families. The rollout reads the sink's ``/metrics`` through the API server's
Service proxy (``GET /api/v1/namespaces/NS/services/mlops-payload-sink:http/proxy/metrics``):
no port-forward process, no Prometheus to install, and one namespaced permission, ``get`` on
``services/proxy`` of that one Service (``manifests/base/payload-sink.yaml``'s Role), beside
the InferenceService and Revision reads and writes the deploy already needs.

The sink counts per model version (the storage URI every event carries; the agent's
``Ce-Source`` names no revision): :func:`by_revision` maps each version to the Knative Revision
in the InferenceService's traffic that serves it, read from the Revision itself
(``kubernetes_target.revision_versions``, the same read :meth:`KubernetesTarget.pair` makes).

The outcome is recorded as a Kubernetes Event on the InferenceService, not an annotation: KServe
copies the InferenceService's annotations onto the Knative template (``buildObjectMeta`` in
``pkg/controller/v1beta1/inferenceservice/components/predictor.go``), so an annotation written
after the rollout would start a new revision.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serving import kubernetes_lease, kubernetes_target
from serving.canary_analysis import Snapshot, parse_exposition
from serving.inference_service import (
    PAYLOAD_SINK_SERVICE,
    TrafficChangedError,
    TrafficSpec,
    check_traffic,
    traffic_spec,
)
from serving.rollout import CanaryPair, RolloutResult, canary_pair

SINK_PORT_NAME = "http"
# Seconds a step's traffic split may take (a new split is a Knative route change, no new pod).
SHARE_TIMEOUT_S = 120
# After a split changes, the logger's events of requests already in flight still arrive: the
# window starts once they have (the logger posts from a queue, typically within a second).
SETTLE_S = 2.0


def by_revision(snapshot: Snapshot, versions: dict[str, str]) -> Snapshot:
    """The sink's per-version counts under the names of the Revisions serving those versions.

    Args:
        snapshot: As the sink exports it: keyed by ``v<version>``, ``model_version`` set.
        versions: The model version of each Revision in the traffic
            (``kubernetes_target.revision_versions``).

    Returns:
        The same counts, each under the one Revision serving its version. Counts of a version
        no Revision in the traffic serves, or that two Revisions serve (they cannot be told
        apart), keep the sink's key: no Revision is credited with another's traffic.
    """
    serving: dict[str, list[str]] = {}
    for revision, version in versions.items():
        serving.setdefault(version, []).append(revision)
    mapped = Snapshot(resets=list(snapshot.resets))
    for key, counts in snapshot.revisions.items():
        names = serving.get(counts.model_version, [])
        mapped.revisions[names[0] if len(names) == 1 else key] = counts
    return mapped


def read_sink_metrics(namespace: str, service: str = PAYLOAD_SINK_SERVICE) -> str:
    """The payload sink's ``/metrics`` text, through the API server's Service proxy.

    Raises:
        RuntimeError: One line naming the Service, when the proxy request fails (no sink
            deployed, no ``services/proxy`` permission, the API unreachable after retries).
    """
    from kubernetes import client as k8s

    api = k8s.CoreV1Api(kubernetes_target._client().api_instance.api_client)
    call = lambda: api.connect_get_namespaced_service_proxy_with_path(  # noqa: E731
        f"{service}:{SINK_PORT_NAME}", namespace, "metrics"
    )
    return str(kubernetes_target._request("read metrics of", namespace, service, call, "Service"))


class KubernetesTarget:
    """An InferenceService in the cluster, its signals read from the payload sink."""

    def __init__(
        self,
        name: str,
        namespace: str,
        state_dir: Path,
        tracking_uri: str | None,
        metrics: Callable[[], str] | None = None,
        settle_s: float = SETTLE_S,
    ) -> None:
        """Drive ``name`` in ``namespace``.

        Args:
            name: The InferenceService.
            namespace: Its namespace (the sink's too).
            state_dir: Passed to ``serving.deploy`` (unused by the kubernetes target).
            tracking_uri: MLflow, for the aliases after promote/rollback (``None``: skip).
            metrics: Returns the sink's ``/metrics`` text (default: :func:`read_sink_metrics`).
            settle_s: Seconds to wait after a split change before the window starts.
        """
        self.name = name
        self.namespace = namespace
        self.state_dir = state_dir
        self.tracking_uri = tracking_uri
        self._metrics = metrics or (lambda: read_sink_metrics(namespace))
        self.settle_s = settle_s
        # A Revision's metadata never changes: its version is read once.
        self._versions: dict[str, str] = {}
        self._expected: TrafficSpec | None = None
        self._holder = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._lost: str | None = None

    def _traffic_versions(self, isvc: dict[str, Any]) -> dict[str, str]:
        """The model version of each Revision in ``isvc``'s traffic (read once per Revision)."""
        traffic = isvc.get("status", {}).get("components", {}).get("predictor", {})
        names = {t.get("revisionName", "") for t in traffic.get("traffic", [])} - {""}
        unread = names - set(self._versions)
        self._versions.update(kubernetes_target.revision_versions(self.namespace, unread))
        return {n: self._versions[n] for n in names if n in self._versions}

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the InferenceService's rollout Lease (``coordination.k8s.io``) while it runs.

        A Lease, not an annotation (KServe would copy an annotation onto the revision template
        and start a new revision). A thread renews it every third of its duration; a Lease
        lost meanwhile stops the rollout at its next check, before it writes again.

        Raises:
            RolloutLockedError: When another rollout holds a current Lease.
        """
        kubernetes_lease.acquire_lease(self.name, self.namespace, self._holder)
        done = threading.Event()

        def renew() -> None:
            while not done.wait(kubernetes_lease.LEASE_DURATION_S / 3):
                try:
                    kubernetes_lease.renew_lease(self.name, self.namespace, self._holder)
                except kubernetes_lease.LeaseLostError as err:
                    self._lost = str(err)
                    return
                except RuntimeError:  # the API hiccupped: the next renewal may succeed
                    continue

        keeper = threading.Thread(target=renew, name="rollout-lease", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            done.set()
            keeper.join()
            if self._lost is None:
                kubernetes_lease.release_lease(self.name, self.namespace, self._holder)

    def check(self) -> None:
        """Stop when the Lease was lost or someone else changed the traffic."""
        if self._lost is not None:
            raise TrafficChangedError(
                "losing the rollout Lease", f"stopped by losing the rollout Lease: {self._lost}"
            )
        check_traffic(kubernetes_target.get(self.name, self.namespace), self._expected)

    def pair(self) -> CanaryPair:
        """The stable (``prev``) and canary (``latest``) revisions, versions from the Revisions."""
        isvc = kubernetes_target.get(self.name, self.namespace)
        self._expected = traffic_spec(isvc)
        versions = self._traffic_versions(isvc)
        return canary_pair(isvc, {r: {"modelVersion": v} for r, v in versions.items()})

    def reference(self, pair: CanaryPair) -> dict[str, list[float]]:
        """The canary's training bins, from the store its storage URI names."""
        from mlops.store import open_store, split_version_uri
        from serving.canary_analysis import reference_fractions

        isvc = kubernetes_target.get(self.name, self.namespace)
        uri = isvc["spec"]["predictor"]["model"]["storageUri"]
        root, model, version = split_version_uri(uri)
        return reference_fractions(open_store(root).read_metadata(model, version))

    def read_metrics(self) -> Snapshot:
        """Cumulative counts per Revision in the traffic, as the sink has them per version now."""
        snapshot = parse_exposition(self._metrics(), self.name)
        versions = self._traffic_versions(kubernetes_target.get(self.name, self.namespace))
        return by_revision(snapshot, versions)

    def set_share(self, percent: int) -> None:
        """Set ``canaryTrafficPercent`` (1..99, conditionally); wait until Knative routes by it."""
        if not 1 <= percent <= 99:
            raise ValueError(f"share {percent}: a step sets 1..99 (all traffic is a promote)")
        if self._lost is not None:
            self.check()
        applied = kubernetes_target.set_canary_percent(
            self.name, self.namespace, percent, SHARE_TIMEOUT_S, self._expected
        )
        self._expected = traffic_spec(applied)
        time.sleep(self.settle_s)

    def promote(self) -> None:
        """Latest revision 100% (the field removed); ``champion`` follows."""
        self._final(None)

    def rollback(self) -> None:
        """Previous revision 100%; ``champion`` stays where it is."""
        self._final(0)

    def _final(self, percent: int | None) -> None:
        from serving.deploy import set_canary_traffic

        if self._lost is not None:
            self.check()
        applied = set_canary_traffic(
            self.name,
            percent,
            "kubernetes",
            state_dir=self.state_dir,
            namespace=self.namespace,
            tracking_uri=self.tracking_uri,
            expected=self._expected,
        )
        self._expected = traffic_spec(applied)

    def record(self, outcome: dict[str, Any]) -> None:
        """Record the outcome as an Event on the InferenceService (``kubectl describe isvc``)."""
        kubernetes_target.record_event(
            self.name,
            self.namespace,
            reason="CanaryRollout",
            message=json.dumps(outcome, sort_keys=True),
            warning=outcome.get("outcome") != "promoted",
            at=datetime.now(UTC),
        )


def run_cluster_rollout(
    name: str,
    namespace: str,
    steps: str,
    interval_s: float,
    min_requests: int,
    tracking_uri: str | None,
    emit: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[RolloutResult, str]:
    """The pipeline's rollout step: step the canary of ``name`` up, promote or roll back.

    Args:
        name: The InferenceService.
        namespace: Its namespace.
        steps: Canary shares, ``"10,50,100"``.
        interval_s: Seconds of traffic judged per step.
        min_requests: Canary requests a window needs to be judged.
        tracking_uri: MLflow: the aliases follow, the version gets the outcome tags.
        emit: Prints each step's line and JSON log line (the step's log in the KFP UI).
        sleep: Waits out each window (``time.sleep``; tests pass their own).

    Returns:
        The result and the HTML report of it.

    Raises:
        ValueError: When the steps or the interval are malformed (before any change).
        LookupError: When no canary is deployed.
        RolloutAborted: When a step failed; the canary was rolled back.
    """
    from serving.canary_analysis import Thresholds
    from serving.rollout import (
        STOPPED,
        RolloutPlan,
        StepRecord,
        parse_steps,
        run_rollout,
        tag_version,
    )
    from serving.rollout_report import render

    plan = RolloutPlan(parse_steps(steps), interval_s, Thresholds(min_requests=min_requests))
    target = KubernetesTarget(name, namespace, Path("."), tracking_uri)

    def step(record: StepRecord) -> None:
        emit(record.line())
        emit(json.dumps(record.as_json(), separators=(",", ":")))

    result = run_rollout(target, plan, step, sleep)
    emit(json.dumps(result.as_json(), separators=(",", ":")))
    if tracking_uri and result.outcome != STOPPED:  # a human's decision keeps its tags
        tag_version(tracking_uri, name, result.pair.canary_version, result)
    return result, render(result, plan)
