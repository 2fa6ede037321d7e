"""The payload sink's counts: request and response events paired and counted per model version.

What is paired, how, and what is bounded: see ``serving.payload_sink``. Thread-safe: the app
counts in its event loop, the benchmark and tests from plain threads.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mlops.validation import bin_counts
from serving.drift import sample_rows
from serving.payload_events import LoggedEvent, parse_event
from serving.payload_references import Reference, ReferenceCache, load_reference

# The model server's own request timeout is far below this: a request without a response after
# 30 s was not answered 200.
RESPONSE_TIMEOUT_S = 30.0
# Events waiting for their other half, at most, and their bodies' bytes (the pod has 512 Mi).
MAX_PENDING = 10_000
MAX_PENDING_BYTES = 64 * 2**20
# One payload, at most: 1000 rows of 30 features as JSON are about 300 KB.
MAX_BODY_BYTES = 2**20
# Label bounds: models, and versions per model, that get series.
MAX_MODELS = 16
MAX_VERSIONS = 8
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_LABELS = ("model", "revision", "model_version")
OTHER_CLASS = "_other"
# Without the model's own classes (no reference), the first labels seen per model, at most this
# many, get their own series; later ones count as ``_other``: labels stay bounded.
MAX_CLASSES = 20
UNKNOWN_REVISION = "none"


class DuplicateEvent(ValueError):
    """A second event of one kind for one ``(Ce-Id, storage URI)``: refused, the first kept."""


class TooLarge(ValueError):
    """A body over ``MAX_BODY_BYTES``."""


def version_revision(version: str) -> str:
    """The ``revision`` label of a version's series: ``v<version>`` (``none`` without one)."""
    return f"v{version}" if version else UNKNOWN_REVISION


@dataclass
class _Half:
    kind: str
    labels: tuple[str, str, str]
    uri: str
    time: datetime
    seen: float
    body: bytes


@dataclass(frozen=True)
class Paired:
    """A request and its 200 response, counted: what a mirror needs.

    Attributes:
        labels: ``(model, revision, model_version)`` of the version that answered.
        request: The request body.
        predicted: The answered labels, as strings.
    """

    labels: tuple[str, str, str]
    request: bytes
    predicted: list[str]


class PayloadCounter:
    """Pairs request and response events and counts them per model version."""

    def __init__(
        self,
        references: Callable[[str], Reference | None] = load_reference,
        namespace: str | None = None,
        response_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Count into a registry of this instance's own.

        Args:
            references: Reads a version's reference from its storage URI (blocking; cached,
                run in a thread by the app).
            namespace: The only ``Ce-Namespace`` accepted; None accepts any.
            response_timeout_s: Seconds a request waits for its response (default
                ``RESPONSE_TIMEOUT_S``, read when the counter is made).
            clock: Monotonic seconds (tests pass their own).
        """
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mlops_inference_requests", "Logged requests", [*_LABELS, "code"], registry=r
        )
        self.latency = Histogram(
            "mlops_inference_request_duration_seconds",
            "Request to response event time",
            _LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "mlops_predictions",
            "Predicted rows per class",
            [*_LABELS, "predicted_class"],
            registry=r,
        )
        self.input_bins = Counter(
            "mlops_input_bin_rows",
            "Rows per training bin",
            [*_LABELS, "feature", "bin"],
            registry=r,
        )
        self.shadow = Counter(
            "mlops_shadow_requests", "Mirrored requests", [*_LABELS, "outcome"], registry=r
        )
        self.shadow_rows = Counter(
            "mlops_shadow_rows", "Rows of mirrored requests", [*_LABELS, "outcome"], registry=r
        )
        self.events = Counter("mlops_sink_events", "CloudEvents received", ["type"], registry=r)
        self.refused = Counter("mlops_sink_refused", "Events refused", ["reason"], registry=r)
        self.unpaired = Counter(
            "mlops_sink_unpaired", "Responses dropped without their request", ["reason"], registry=r
        )
        self.pending_events = Gauge("mlops_sink_pending_events", "Events waiting", registry=r)
        self.pending_bytes = Gauge("mlops_sink_pending_bytes", "Bytes waiting", registry=r)
        self._families: list[tuple[Any, tuple[str, ...]]] = [
            (self.requests, (*_LABELS, "code")),
            (self.latency, _LABELS),
            (self.predictions, (*_LABELS, "predicted_class")),
            (self.input_bins, (*_LABELS, "feature", "bin")),
            (self.shadow, (*_LABELS, "outcome")),
            (self.shadow_rows, (*_LABELS, "outcome")),
        ]
        self.namespace = namespace
        self.response_timeout_s = (
            RESPONSE_TIMEOUT_S if response_timeout_s is None else response_timeout_s
        )
        self._clock = clock
        self._pending: OrderedDict[tuple[str, str, str], _Half] = OrderedDict()
        self._bytes = 0
        self._paired: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._lock = threading.Lock()
        self.references = ReferenceCache(references, clock=clock)
        self._versions: dict[str, set[str]] = {}
        self._seen_classes: dict[str, set[str]] = {}
        # The newest version (and its labels) seen per model: the canary to mirror to.
        self.newest: dict[str, tuple[str, str, str]] = {}

    def parse(self, headers: dict[str, str], body_size: int) -> LoggedEvent:
        """Check one event's headers and body size, and admit its labels.

        Raises:
            ValueError: Naming the attribute that is wrong, or the bound that is passed.
        """
        try:
            if body_size > MAX_BODY_BYTES:
                raise TooLarge(f"the body has more than {MAX_BODY_BYTES} bytes")
            event = parse_event(headers, self.namespace)
            if not event.shadow:
                with self._lock:
                    self._admit(event.model, event.version)
        except TooLarge:
            self.refused.labels("too_large").inc()
            raise
        except ValueError:
            self.refused.labels("invalid").inc()
            raise
        return event

    def receive(self, headers: dict[str, str], body: bytes) -> Paired | None:
        """Take one CloudEvent (binary mode: ``ce-*`` headers, payload body), in this thread.

        Returns:
            The pair, when this event completed one (None otherwise, or for a mirrored request).

        Raises:
            ValueError: Naming the attribute that is missing or malformed (``DuplicateEvent``
                for a second event of one kind and key).
        """
        event = self.parse(headers, len(body))
        self.references.read(event.storage_uri)
        return self.accept(event, body)

    def accept(self, event: LoggedEvent, body: bytes) -> Paired | None:
        """Pair and count a checked event (its reference, if any, already read).

        Raises:
            DuplicateEvent: For a second event of one kind and key, or a key already paired.
        """
        self.events.labels(event.kind).inc()
        if event.shadow:
            return None  # our own mirror, logged by the canary: not client traffic
        labels = (event.model, version_revision(event.version), event.version)
        newest = self.newest.get(event.model)
        if event.version and (newest is None or int(event.version) > int(newest[2] or -1)):
            self.newest[event.model] = labels
        key = (event.model, event.event_id, event.storage_uri)
        with self._lock:
            self._expire(self._clock())
            other = self._pending.get(key)
            if key in self._paired or (other is not None and other.kind == event.kind):
                self.refused.labels("duplicate").inc()
                raise DuplicateEvent(
                    f"a {event.kind} event with ce-id {event.event_id!r} "
                    "was already received for this version"
                )
            half = _Half(event.kind, labels, event.storage_uri, event.time, self._clock(), body)
            if other is None:
                self._hold(key, half)
                return None
            self._release(key)
            self._paired[key] = None
            while len(self._paired) > MAX_PENDING:
                self._paired.popitem(last=False)
            if event.version not in self._versions.get(event.model, ()):
                return None  # its version's series were replaced while it waited
        request, response = (other, half) if other.kind == "request" else (half, other)
        self.requests.labels(*labels, "200").inc()
        latency = (response.time - request.time).total_seconds()
        self.latency.labels(*labels).observe(max(0.0, latency))
        predicted = self._count(labels, request.uri, request.body, response.body)
        return Paired(labels, request.body, predicted) if predicted else None

    def expire(self) -> None:
        """Count what waited longer than the response timeout (before a scrape)."""
        with self._lock:
            self._expire(self._clock())

    def _hold(self, key: tuple[str, str, str], half: _Half) -> None:
        self._pending[key] = half
        self._bytes += len(half.body)
        while len(self._pending) > MAX_PENDING or self._bytes > MAX_PENDING_BYTES:
            self._drop(next(iter(self._pending)), "evicted")
        self._gauges()

    def _release(self, key: tuple[str, str, str]) -> _Half:
        half = self._pending.pop(key)
        self._bytes -= len(half.body)
        self._gauges()
        return half

    def _gauges(self) -> None:
        self.pending_events.set(len(self._pending))
        self.pending_bytes.set(self._bytes)

    def _drop(self, key: tuple[str, str, str], reason: str) -> None:
        half = self._release(key)
        model, _, version = half.labels
        if version not in self._versions.get(model, ()):
            return  # its version's series were replaced while it waited: counted nowhere
        if half.kind == "request":
            self.requests.labels(*half.labels, "5xx").inc()
        else:
            self.unpaired.labels(reason).inc()

    def _expire(self, now: float) -> None:
        while self._pending:
            key, oldest = next(iter(self._pending.items()))
            if now - oldest.seen < self.response_timeout_s:
                return
            self._drop(key, "timeout")

    def _admit(self, model: str, version: str) -> None:
        """Give ``(model, version)`` series, within ``MAX_MODELS`` and ``MAX_VERSIONS``."""
        versions = self._versions.get(model)
        if versions is None:
            if len(self._versions) >= MAX_MODELS:
                raise ValueError(f"ce-inferenceservicename: more than {MAX_MODELS} models")
            versions = self._versions[model] = set()
        if version in versions:
            return
        if len(versions) >= MAX_VERSIONS:
            oldest = min(versions, key=lambda v: int(v or -1))
            if int(version or -1) < int(oldest or -1):
                raise ValueError(
                    f"ce-annotations: version {version} is older than the "
                    f"{MAX_VERSIONS} versions of {model} counted"
                )
            versions.discard(oldest)
            self._forget(model, oldest)
        versions.add(version)

    def _forget(self, model: str, version: str) -> None:
        for metric, names in self._families:
            stale = {
                tuple(sample.labels[n] for n in names)
                for family in metric.collect()
                for sample in family.samples
                if (sample.labels.get("model"), sample.labels.get("model_version"))
                == (model, version)
            }
            for values in stale:
                metric.remove(*values)

    def _known_class(self, model: str, value: str, reference: Reference | None) -> bool:
        if reference is not None and reference.classes:
            return value in reference.classes
        seen = self._seen_classes.setdefault(model, set())
        if value in seen or len(seen) < MAX_CLASSES:
            seen.add(value)
            return True
        return False

    def _count(
        self, labels: tuple[str, str, str], uri: str, request: bytes, response: bytes
    ) -> list[str] | None:
        reference = self.references.get(uri)
        try:
            predicted = json.loads(response)["outputs"][0]["data"]
            tensor = json.loads(request)["inputs"][0]
            rows = np.asarray(tensor["data"], dtype=float).reshape(tensor["shape"])
            labels_out = [str(v) for v in np.asarray(predicted).ravel().tolist()]
        except (ValueError, KeyError, IndexError, TypeError):
            return None  # not an Open Inference Protocol pair: counted as a request only
        values, counts = np.unique(np.asarray(labels_out), return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            known = self._known_class(labels[0], value, reference)
            self.predictions.labels(*labels, value if known else OTHER_CLASS).inc(count)
        if reference is None or rows.ndim != 2 or rows.shape[1] != len(reference.feature_names):
            return labels_out
        rows = sample_rows(rows)  # the local server's sample and binning rule
        for column, (name, edges) in enumerate(
            zip(reference.feature_names, reference.bin_edges, strict=True)
        ):
            for b, n in enumerate(bin_counts(edges, rows[:, column]).tolist()):
                if n:
                    self.input_bins.labels(*labels, name, str(b)).inc(n)
        return labels_out

    def record_shadow(self, canary: tuple[str, str, str], stable: list[str], answer: Any) -> None:
        """Compare the canary's answer to a mirrored request with the stable version's labels.

        Args:
            canary: The canary's labels (the shadow counts are the canary's).
            stable: The labels the stable version answered the client.
            answer: The canary's response body (parsed JSON), or None when it failed.
        """
        try:
            labels = [str(v) for v in np.asarray(answer["outputs"][0]["data"]).ravel().tolist()]
        except (TypeError, KeyError, IndexError, ValueError):
            labels = []
        if len(labels) != len(stable):
            self.shadow.labels(*canary, "failed").inc()
            return
        agreed = sum(a == b for a, b in zip(labels, stable, strict=True))
        self.shadow.labels(*canary, "agreed" if agreed == len(stable) else "disagreed").inc()
        self.shadow_rows.labels(*canary, "agreed").inc(agreed)
        self.shadow_rows.labels(*canary, "disagreed").inc(len(stable) - agreed)
