"""The sink of KServe's payload logger: CloudEvents in, the canary-signal metrics out.

In the cluster the predictor's logger (``spec.predictor.logger``, mode ``all``) posts one
CloudEvent per inference request and one per response to this app (KServe v0.20.0
``pkg/logger/handler.go`` and ``worker.go``). Binary content mode: the body is the payload as
the client sent it (request) or the model server answered it (response); the attributes are
``ce-*`` headers:

- ``ce-id``: the same for a request and its response (the client's ``Ce-Id`` or a new UUID),
  so the two events are paired by it;
- ``ce-type``: ``org.kubeflow.serving.inference.request`` or ``...response``;
- ``ce-source``: the predictor *pod's* name, ``<revision>-deployment-<hash>-<hash>``
  (``agent_injector.go`` passes ``--source-uri pod.Name``): the revision comes from it;
- ``ce-time``: when the request arrived, resp. the response was complete: their difference is
  the latency through the model server;
- ``ce-inferenceservicename``: the model; ``ce-annotations``: the pod annotations listed in
  the logger's ``metadataAnnotations``, as JSON; we list KServe's storage URI annotation, so
  each event names the model version it was served by.

Shadow agreement: a sample (``SHADOW_SAMPLE``) of the requests answered by any revision older
than the newest one seen is re-sent, after the client already has its answer, to the canary's
tagged route (``enable-tag-routing``'s ``latest-`` host, ``MLOPS_SHADOW_URL``), and the labels
are compared row by row (``mlops_shadow_requests_total`` / ``mlops_shadow_rows_total``,
labelled with the canary). The mirrored request carries ``SHADOW_HEADER``, which the logger
passes on (``metadataHeaders``) so the canary's own counts skip it. At most
``SHADOW_CONCURRENCY`` mirrors are in flight; beyond, ``dropped``.

A response event is sent only for status 200, so a request whose response has not come within
``RESPONSE_TIMEOUT_S`` is counted as failed (``code="5xx"``): non-200 answers of identical
inputs are the same for both revisions except when the canary fails, which is what is judged.

Everything is counted in the SAME ``mlops_*`` families the local server exports
(``serving.observability``), so ``serving.canary_analysis.parse_exposition`` reads both. The
pairing is in memory: run ONE process (uvicorn's default, ``workers=1``); counters restart
with it, which ``canary_analysis.window`` reports as a reset.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mlops.validation import bin_counts
from serving.drift import sample_rows
from serving.inference_service import SHADOW_HEADER, STORAGE_URI_ANNOTATION

SHADOW_SAMPLE = 0.25
SHADOW_CONCURRENCY = 4
SHADOW_TIMEOUT_S = 5.0
REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
# Knative names a revision's pods <revision>-deployment-<replicaset hash>-<pod hash>.
_POD_NAME = re.compile(r"^(?P<revision>[a-z0-9-]+?)-deployment-[a-z0-9]+-[a-z0-9]+$")
# The model server's own request timeout is far below this: a request without a response after
# 30 s was not answered 200.
RESPONSE_TIMEOUT_S = 30.0
# Requests waiting for their response, at most: beyond, the oldest is counted as failed, so
# a flood of unanswered requests cannot grow the memory.
MAX_PENDING = 10_000
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_LABELS = ("model", "revision", "model_version")
OTHER_CLASS = "_other"
# Without the model's own classes (no reference), the first labels seen per model, at most this
# many, get their own series; later ones count as ``_other``: labels stay bounded.
MAX_CLASSES = 20
UNKNOWN_REVISION = "none"


@dataclass
class _Pending:
    labels: tuple[str, str, str]
    time: datetime
    seen: float
    body: bytes


@dataclass(frozen=True)
class Paired:
    """A request and its 200 response, counted: what a mirror needs.

    Attributes:
        labels: ``(model, revision, model_version)`` of the revision that answered.
        request: The request body.
        predicted: The answered labels, as strings.
    """

    labels: tuple[str, str, str]
    request: bytes
    predicted: list[str]


def revision_number(revision: str) -> int:
    """Knative's revision counter (``...-00002`` -> 2), -1 when the name has none."""
    tail = revision.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


@dataclass(frozen=True)
class Reference:
    """What the sink knows of one model version: its classes and training bins.

    Attributes:
        classes: The model's class labels as strings (others count as ``_other``).
        feature_names: The input columns, in order.
        bin_edges: Inner bin edges per feature (same order).
    """

    classes: frozenset[str]
    feature_names: tuple[str, ...]
    bin_edges: tuple[np.ndarray, ...]


def reference_from_metadata(metadata: dict[str, Any]) -> Reference:
    """The classes and bins of a version's ``metadata.json``."""
    features = (metadata.get("reference_statistics") or {}).get("features") or {}
    names = tuple(metadata.get("feature_names") or features)
    return Reference(
        classes=frozenset(str(c) for c in metadata.get("classes") or ()),
        feature_names=names,
        bin_edges=tuple(np.asarray(features[n]["bin_edges"], dtype=float) for n in names),
    )


def load_reference(storage_uri: str) -> Reference | None:
    """Read the version's metadata from the model store (None when it cannot be read)."""
    from mlops.store import open_store, split_version_uri

    try:
        root, model, version = split_version_uri(storage_uri)
        return reference_from_metadata(open_store(root).read_metadata(model, version))
    except Exception:  # noqa: BLE001 - no reference: classes count as they come, no bins
        return None


class PayloadCounter:
    """Pairs request and response events by id and counts them per revision."""

    def __init__(self, references: Callable[[str], Reference | None] = load_reference) -> None:
        """Count into a registry of this instance's own.

        Args:
            references: Loads a version's reference from its storage URI (cached here).
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
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._lock = threading.Lock()
        self._load = references
        self._references: dict[str, Reference | None] = {}
        self._uris: dict[str, str] = {}
        self._seen_classes: dict[str, set[str]] = {}
        # The newest revision (and its labels) seen per model: the canary to mirror to.
        self.newest: dict[str, tuple[str, str, str]] = {}

    def receive(self, headers: dict[str, str], body: bytes) -> Paired | None:
        """Take one CloudEvent (binary mode: ``ce-*`` headers, payload body).

        Returns:
            The pair, when this event completed one (None otherwise, or for a mirrored request).

        Raises:
            ValueError: Naming the attribute that is missing or malformed.
        """
        kind = headers.get("ce-type", "")
        event_id = headers.get("ce-id", "")
        if kind not in (REQUEST_TYPE, RESPONSE_TYPE) or not event_id:
            raise ValueError(f"ce-type must be {REQUEST_TYPE} or {RESPONSE_TYPE} with a ce-id")
        try:
            at = datetime.fromisoformat(headers.get("ce-time", "").replace("Z", "+00:00"))
        except ValueError as err:
            raise ValueError(f"ce-time {headers.get('ce-time')!r} is not an RFC 3339 time") from err
        self.events.labels(kind.rsplit(".", 1)[1]).inc()
        if SHADOW_HEADER in headers.get("ce-metadata", ""):
            return None  # our own mirror, logged by the canary: not client traffic
        labels = self._labels(headers)
        newest = self.newest.get(labels[0])
        if newest is None or revision_number(labels[1]) > revision_number(newest[1]):
            self.newest[labels[0]] = labels
        with self._lock:
            self._expire(time.monotonic())
            if kind == REQUEST_TYPE:
                self._pending[event_id] = _Pending(labels, at, time.monotonic(), body)
                while len(self._pending) > MAX_PENDING:
                    self._fail(self._pending.popitem(last=False)[1])
                return None
            request = self._pending.pop(event_id, None)
        if request is None:  # the request event was lost or expired: nothing to pair
            return None
        self.requests.labels(*request.labels, "200").inc()
        self.latency.labels(*request.labels).observe(max(0.0, (at - request.time).total_seconds()))
        predicted = self._count(request.labels, request.body, body)
        return Paired(request.labels, request.body, predicted) if predicted else None

    def expire(self) -> None:
        """Count the requests unanswered for ``RESPONSE_TIMEOUT_S`` as failed (before a scrape)."""
        with self._lock:
            self._expire(time.monotonic())

    def _expire(self, now: float) -> None:
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if now - oldest.seen < RESPONSE_TIMEOUT_S:
                return
            self._fail(self._pending.popitem(last=False)[1])

    def _fail(self, request: _Pending) -> None:
        self.requests.labels(*request.labels, "5xx").inc()

    def _labels(self, headers: dict[str, str]) -> tuple[str, str, str]:
        model = headers.get("ce-inferenceservicename", "")[:128]
        found = _POD_NAME.match(headers.get("ce-source", ""))
        revision = found["revision"] if found else UNKNOWN_REVISION
        version = ""
        try:
            uri = str(json.loads(headers.get("ce-annotations") or "{}")[STORAGE_URI_ANNOTATION])
            version = uri.rstrip("/").rsplit("/", 1)[-1]
            self._uris[revision] = uri
        except (ValueError, KeyError, TypeError):
            pass
        return model, revision, version if version.isdigit() else ""

    def _reference(self, revision: str) -> Reference | None:
        uri = self._uris.get(revision)
        if uri is None:
            return None
        if uri not in self._references:
            self._references[uri] = self._load(uri)
        return self._references[uri]

    def _known_class(self, model: str, value: str, reference: Reference | None) -> bool:
        if reference is not None and reference.classes:
            return value in reference.classes
        seen = self._seen_classes.setdefault(model, set())
        if value in seen or len(seen) < MAX_CLASSES:
            seen.add(value)
            return True
        return False

    def _count(
        self, labels: tuple[str, str, str], request: bytes, response: bytes
    ) -> list[str] | None:
        reference = self._reference(labels[1])
        try:
            predicted = json.loads(response)["outputs"][0]["data"]
            tensor = json.loads(request)["inputs"][0]
            rows = np.asarray(tensor["data"], dtype=float).reshape(tensor["shape"])
        except (ValueError, KeyError, IndexError, TypeError):
            return None  # not an Open Inference Protocol pair: counted as a request only
        values, counts = np.unique(np.asarray(predicted).astype(str), return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            known = self._known_class(labels[0], value, reference)
            self.predictions.labels(*labels, value if known else OTHER_CLASS).inc(count)
        labels_out = [str(v) for v in np.asarray(predicted).ravel().tolist()]
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
        """Compare the canary's answer to a mirrored request with the stable revision's labels.

        Args:
            canary: The canary's labels (the shadow counts are the canary's).
            stable: The labels the stable revision answered the client.
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


class Mirror:
    """Re-sends a sample of stable requests to the canary's tagged route, off the client's path."""

    def __init__(self, counts: PayloadCounter, url_template: str, sample: float) -> None:
        """Mirror with ``url_template`` (``{model}`` is replaced), a ``sample`` share of pairs."""
        import httpx

        self.counts, self.url_template, self.sample = counts, url_template, sample
        self.client = httpx.AsyncClient(timeout=SHADOW_TIMEOUT_S)
        self.in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._rng = random.Random(0)

    def offer(self, pair: Paired) -> None:
        """Mirror ``pair`` when it is a stable revision's and falls in the sample."""
        canary = self.counts.newest.get(pair.labels[0])
        if canary is None or canary[1] == pair.labels[1] or self._rng.random() >= self.sample:
            return
        if self.in_flight >= SHADOW_CONCURRENCY:
            self.counts.shadow.labels(*canary, "dropped").inc()
            return
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._send(canary, pair))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, canary: tuple[str, str, str], pair: Paired) -> None:
        import httpx

        answer: Any = None
        try:
            sent = await self.client.post(
                self.url_template.format(model=pair.labels[0]),
                content=pair.request,
                headers={"Content-Type": "application/json", SHADOW_HEADER: "1"},
            )
            if sent.status_code == 200:
                answer = sent.json()
        except (httpx.HTTPError, ValueError):
            answer = None
        finally:
            self.in_flight -= 1
        self.counts.record_shadow(canary, pair.predicted, answer)


def create_app(
    counter: PayloadCounter | None = None,
    shadow_url: str | None = None,
    shadow_sample: float = SHADOW_SAMPLE,
) -> Starlette:
    """The sink: ``POST /`` takes a CloudEvent, ``GET /metrics`` serves the counts.

    Args:
        counter: Where the counts go (a new one by default).
        shadow_url: The canary's tagged route, ``{model}`` replaced by the model's name
            (``MLOPS_SHADOW_URL``); None: no mirroring.
        shadow_sample: Share of the stable revision's answered requests mirrored.
    """
    counts = counter or PayloadCounter()
    mirror = Mirror(counts, shadow_url, shadow_sample) if shadow_url else None

    async def event(request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            pair = counts.receive(headers, await request.body())
        except ValueError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        if pair is not None and mirror is not None:
            mirror.offer(pair)
        return Response(status_code=202)

    async def metrics(_: Request) -> Response:
        counts.expire()
        return Response(generate_latest(counts.registry), media_type=CONTENT_TYPE_LATEST)

    async def health(_: Request) -> Response:
        return Response("ok")

    return Starlette(
        routes=[
            Route("/", event, methods=["POST"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", health, methods=["GET"]),
        ]
    )


def main() -> None:
    """Run the sink with uvicorn on ``PORT`` (default 8000), one process."""
    import os

    import uvicorn

    shadow_url = os.environ.get("MLOPS_SHADOW_URL") or None
    uvicorn.run(
        create_app(shadow_url=shadow_url), host="0.0.0.0", port=int(os.environ.get("PORT", "8000"))
    )  # noqa: S104


if __name__ == "__main__":
    main()
