"""Per-request metrics and JSON log lines, and the request-size limit, as one ASGI middleware.

KServe's ``/metrics`` serves ``prometheus_client``'s default registry, so the counters here
appear there next to KServe's own ``request_*_seconds`` histograms. The revision that answered
is known only deep inside the router; it reaches the middleware through a context variable
holding a mutable ``RequestInfo``, which the route handler (same task) fills in.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Histogram

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_LABELS = ("model", "revision", "model_version")
REQUESTS = Counter("mlops_inference_requests", "Inference requests answered", [*_LABELS, "code"])
ERRORS = Counter(
    "mlops_inference_errors", "Inference requests answered with 4xx/5xx", [*_LABELS, "code"]
)
ROWS = Counter("mlops_inference_rows", "Rows predicted", _LABELS)
LATENCY = Histogram(
    "mlops_inference_request_duration_seconds",
    "Inference request latency, from first byte in to last byte out of the server",
    _LABELS,
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
# The canary-signal families (serving.canary_analysis reads them back from /metrics). Plain
# counters and histograms: in Prometheus multiprocess mode they add up across workers.
PREDICTIONS = Counter(
    "mlops_predictions", "Predicted rows per class", [*_LABELS, "predicted_class"]
)
PROBABILITY = Histogram(
    "mlops_prediction_probability",
    "Probability of the predicted class, per row (a sample of at most 100 rows per request)",
    _LABELS,
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
INPUT_BINS = Counter(
    "mlops_input_bin_rows",
    "Served rows per feature per training-reference bin (a sample of at most 100 per request)",
    [*_LABELS, "feature", "bin"],
)
SHADOW = Counter(
    "mlops_shadow_requests",
    "Requests of the stable revision mirrored to the canary (labelled with the canary)",
    [*_LABELS, "outcome"],
)
SHADOW_ROWS = Counter(
    "mlops_shadow_rows",
    "Rows of mirrored requests whose canary label equals (agreed) or not (disagreed) the stable's",
    [*_LABELS, "outcome"],
)
# Predicted labels outside the model's own classes share one label value: labels stay bounded.
OTHER_CLASS = "_other"
# Before routing (e.g. a body that is not JSON) no revision is known.
NO_REVISION = "none"
# The label of requests for a model this server does not serve: names in URLs are the client's
# choice, and every distinct label value is a series Prometheus keeps for ever. Not a valid
# Kubernetes name, so no served model can have it.
UNKNOWN_MODEL = "_unknown"
# Request ids are echoed and logged: a short token of URL-safe characters (a UUID, a W3C trace
# id, a hex digest); any other value is replaced by a generated id, which the response carries.
REQUEST_ID = re.compile(rb"[A-Za-z0-9._:+=/-]{1,128}")
_MODEL_CHARS = 128
REQUEST_LOGGER = "mlops.serving.requests"
_ERROR_CHARS = 300


@dataclass
class RequestInfo:
    """What one request did; filled in as it is handled, logged when it ends.

    Attributes:
        request_id: ``x-request-id`` of the request, or a generated one.
        model: The model name from the path.
        revision: The revision that answered.
        model_version: The store version of that revision.
        rows: Rows predicted.
        status: HTTP status sent.
        latency_ms: Time from request start to the end of the response.
        error: The error message of a 4xx/5xx answer (never the payload).
    """

    request_id: str
    model: str = ""
    revision: str = NO_REVISION
    model_version: str = ""
    rows: int = 0
    status: int = 0
    latency_ms: float = 0.0
    error: str = ""


_CURRENT: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar(
    "mlops_request", default=None
)


def current_request() -> RequestInfo | None:
    """The ``RequestInfo`` of the inference request being handled, if any."""
    return _CURRENT.get()


def configure_request_log(stream: Any = None) -> logging.Logger:
    """One JSON object per line on ``stream`` (stdout by default), nothing else on it."""
    logger = logging.getLogger(REQUEST_LOGGER)
    logger.handlers.clear()
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def error_response(
    status: int, message: str, *headers: tuple[bytes, bytes]
) -> tuple[Message, Message]:
    """The two ASGI messages of a JSON answer in KServe's ``{"error": message}`` shape."""
    body = json.dumps({"error": message}).encode()
    start = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
    }
    return start, {"type": "http.response.body", "body": body}


def _model_from_path(path: str) -> str | None:
    """The model name of an inference path (v2 ``.../infer``, v1 ``...:predict``), else None."""
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return path[len("/v2/models/") :].split("/", 1)[0]
    if path.startswith("/v1/models/") and path.endswith(":predict"):
        return path[len("/v1/models/") : -len(":predict")]
    return None


class ObservabilityMiddleware:
    """Limits body size and, for inference requests, records metrics and one JSON log line."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, model_names: frozenset[str] = frozenset()
    ) -> None:
        """Wrap ``app``.

        Args:
            app: The ASGI application (KServe's FastAPI app).
            max_body_bytes: Larger request bodies get 413 without being read.
            model_names: The models served; metrics label any other name ``_unknown``.
        """
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.model_names = model_names
        self.logger = logging.getLogger(REQUEST_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        model = _model_from_path(scope["path"])
        if model is None:
            await self._limited(scope, receive, send)
            return
        start = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id")
        if given is not None and REQUEST_ID.fullmatch(given):
            request_id = given.decode("ascii")
        else:
            request_id = uuid.uuid4().hex
            # So KServe's own latency log and the response carry the same id.
            others = [(k, v) for k, v in scope.get("headers", []) if k != b"x-request-id"]
            scope["headers"] = [*others, (b"x-request-id", request_id.encode())]
        info = RequestInfo(request_id=request_id, model=model[:_MODEL_CHARS])
        refused = _refused_content_type(scope, headers)
        if refused is not None:
            start_message, body_message = error_response(415, refused)
            info.status, info.error = 415, refused
            await send(
                {
                    **start_message,
                    "headers": [*start_message["headers"], (b"x-request-id", request_id.encode())],
                }
            )
            await send(body_message)
            self._record(info)
            return
        token = _CURRENT.set(info)
        error = bytearray()

        async def send_and_watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                info.status = int(message["status"])
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            elif info.status >= 400 and len(error) < _ERROR_CHARS:
                error.extend(message.get("body", b"")[:_ERROR_CHARS])
            await send(message)

        try:
            await self._limited(scope, receive, send_and_watch)
        except BaseException as err:
            # Raised past every handler: the server's last resort answers 500 (or the
            # connection breaks off mid-answer). Either way the request failed: a 5xx here too,
            # so the error rate sees it. The type only: an exception's text may quote values.
            info.status = 500
            error[:] = f"the server failed: {type(err).__name__}".encode()
            raise
        finally:
            _CURRENT.reset(token)
            info.latency_ms = round((time.perf_counter() - start) * 1000, 3)
            if info.status >= 400:
                info.error = _error_message(bytes(error))
            self._record(info)

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_body_bytes:
                await self._too_large(int(length), send)
                return
            await self.app(scope, receive, send)
            return
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        # A chunked body has no length up front: read it here, up to the limit, then replay it.
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            body.extend(message.get("body", b""))
            if len(body) > self.max_body_bytes:
                await self._too_large(len(body), send, at_least=True)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, size: int, send: Send, at_least: bool = False) -> None:
        message = (
            f"request body is {'more than ' if at_least else ''}{size} bytes: the limit is "
            f"{self.max_body_bytes} bytes (mlops serve --max-body-bytes); split the rows over "
            "several requests"
        )
        for part in error_response(413, message, (b"connection", b"close")):
            await send(part)

    def _record(self, info: RequestInfo) -> None:
        model = info.model if info.model in self.model_names else UNKNOWN_MODEL
        labels = (model, info.revision, info.model_version)
        code = str(info.status)
        _child(REQUESTS, (*labels, code)).inc()
        _child(LATENCY, labels).observe(info.latency_ms / 1000)
        if info.status >= 400:
            _child(ERRORS, (*labels, code)).inc()
        elif info.rows:
            _child(ROWS, labels).inc(info.rows)
        if self.logger.isEnabledFor(logging.INFO):
            line = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), **vars(info)}
            if not info.error:
                line.pop("error")
            self.logger.info(json.dumps(line, separators=(",", ":")))


_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def _child(metric: Any, labels: tuple[str, ...]) -> Any:
    """``metric.labels(*labels)``, looked up once per label set (it validates on every call)."""
    key = (id(metric), labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*labels)
    return child


def _refused_content_type(scope: Scope, headers: dict[bytes, bytes]) -> str | None:
    """Why an inference request's content type is refused (415), or None to go on.

    Only ``application/json``, and ``application/octet-stream`` with the binary extension's
    ``Inference-Header-Content-Length``: a web page on any origin can post ``text/plain``,
    form bodies (``application/x-www-form-urlencoded``, ``multipart/form-data``) and bodies
    with no content type without a CORS preflight, so none of these may reach a model. A
    request with no content type at all is read as JSON (``tritonclient.http`` sends none)
    only when it does not come from a browser: no ``Origin`` and no ``Sec-Fetch-Site``.
    A GET (v1 has none on these paths) has no body to check.
    """
    if scope.get("method") not in ("POST", "PUT", "PATCH"):
        return None
    given = headers.get(b"content-type")
    content_type = (given or b"").split(b";")[0].strip().lower()
    binary = b"inference-header-content-length" in headers
    allowed = _BINARY_TYPES if binary else (b"application/json",)
    if content_type in allowed:
        if not binary:
            _as_json(scope)
        return None
    from_browser = b"origin" in headers or b"sec-fetch-site" in headers
    if given is None and not from_browser:
        if not binary:
            _as_json(scope)
        return None
    expected = (
        "application/octet-stream (the binary extension)"
        if binary
        else "application/json (or, with Inference-Header-Content-Length, application/octet-stream)"
    )
    return f"unsupported content type: send the request body as {expected}"


_BINARY_TYPES = (b"application/octet-stream", b"application/json")


def _as_json(scope: Scope) -> None:
    """Label a JSON body ``application/json`` for KServe's route.

    Without a content type KServe's route would take the body for binary tensors and refuse it.
    """
    others = [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
    scope["headers"] = [*others, (b"content-type", b"application/json")]


def _error_message(body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:_ERROR_CHARS]
    message = parsed.get("error") or parsed.get("detail") if isinstance(parsed, dict) else parsed
    return str(message)[:_ERROR_CHARS]


def record_predictions(
    labels: tuple[str, str, str],
    classes: frozenset[str],
    predicted: Any,
    top_probabilities: Any | None,
) -> None:
    """Count predicted rows per class and observe the predicted class's probabilities.

    Args:
        labels: ``(model, revision, model_version)``.
        classes: The model's own class labels, as strings; others count as ``_other``.
        predicted: The predicted labels of the request's rows (a numpy array).
        top_probabilities: The predicted class's probability of (a sample of) those rows.
    """
    import numpy as np

    values, counts = np.unique(np.asarray(predicted), return_counts=True)
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        label = str(value) if str(value) in classes else OTHER_CLASS
        _child(PREDICTIONS, (*labels, label)).inc(count)
    if top_probabilities is not None:
        observe_all(_child(PROBABILITY, labels), np.asarray(top_probabilities, dtype=float))


def observe_all(histogram: Any, values: Any) -> None:
    """``histogram.observe(value)`` for each of ``values``, with one write per bucket.

    prometheus_client has no batch observe, and in multiprocess mode every ``observe`` is two
    locked writes to a memory-mapped file: 0.3 ms for the 100 rows sampled from a large
    request, a tenth of its time. This adds the same counts to the same buckets (a value goes
    to the first bucket whose bound it does not exceed, as in ``observe``) and the same sum,
    through the histogram's own bucket values; a test checks both give the same samples.
    """
    import numpy as np

    values = np.asarray(values, dtype=float)
    bounds = histogram._upper_bounds
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=False):
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(values.sum()))
