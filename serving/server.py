"""The local model server: KServe's ``ModelServer`` with the canary router and what it needs.

KServe's own server answers v1 and v2 and ``/metrics``; this adds, on the same FastAPI app:
the ``/versions/{version}`` routes and a faster infer route (``serving.routes``), the
request-size limit, per-revision metrics and JSON request logs, drift gauges, and 422s for
request bodies that do not parse, in KServe's ``{"error": ...}`` shape. It takes away KServe's
model repository extension (``/v2/repository/.../load|unload``): the revisions follow the
InferenceService, and a request must not be able to take them down. Optional bearer-token
auth (``serving.auth``) and connection limits (``serving.limits``) make it safe to expose.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve import ModelServer
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.errors import InvalidInput, ModelNotFound
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.rest.server import RESTServer
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from serving import local_controller
from serving.auth import AuthMiddleware, check_exposure, is_loopback
from serving.docs import install_docs
from serving.features import quoted
from serving.form import mount_form
from serving.form_schema import router_schema
from serving.limits import (
    ConnectionLimits,
    ConnectionShares,
    bounded_protocol,
    fit_to_open_file_limit,
)
from serving.observability import ObservabilityMiddleware, configure_request_log
from serving.routes import V2Routes, revision_unavailable_handler, validation_error_handler
from serving.runtime import CanaryRouter, RevisionUnavailable
from serving.workers import (
    MAX_WORKERS,
    listening_socket,
    multiprocess_metrics,
    serve_forked,
)

DEFAULT_PORT = 8080
# About 14,000 rows of 30 features as JSON; a larger batch should be split.
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    """How to serve an InferenceService locally.

    Attributes:
        name: The InferenceService name, also the served model's name.
        state_dir: The project's state directory (``MLOPS_HOME``).
        host: Address to bind; loopback by default (KServe binds 0.0.0.0 inside a pod).
        port: HTTP port.
        poll_interval_s: How often the state file is checked for deploys, promotes, rollbacks.
        max_body_bytes: Larger request bodies are refused with 413.
        auth_token: Bearer token every request but the health probes must carry; None for none.
        allow_unauthenticated: Listen on a non-loopback ``host`` without a token.
        limits: Header size, read deadlines and the connection cap.
        workers: Processes serving the port (``serving.workers``); 1 serves from this one.
    """

    name: str
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    poll_interval_s: float = 0.5
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    auth_token: str | None = field(default=None, repr=False)
    allow_unauthenticated: bool = False
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    workers: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"workers must be within 1..{MAX_WORKERS}, got {self.workers}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be within 1..65535, got {self.port}")
        if not 0 < self.poll_interval_s <= 60:
            raise ValueError(f"poll_interval_s must be within (0, 60], got {self.poll_interval_s}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")
        check_exposure(self.host, self.auth_token, self.allow_unauthenticated)

    @property
    def url(self) -> str:
        """The base URL clients use."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"


class LocalDataPlane(DataPlane):
    """KServe's DataPlane, ready only when its models are, without the repository extension.

    KServe's ``ready()`` answers True whatever the models' state (``/v2/health/ready`` said
    ready with every model gone); here it is true exactly when every registered model is ready,
    which for the canary router means some revision takes traffic.
    """

    async def ready(self) -> bool:
        """Whether some model is registered and every registered model is ready."""
        models = list(self.model_registry.get_models().values())
        return bool(models) and all([await model.healthy() for model in models])

    def get_model_from_registry(self, name: str) -> Any:
        """KServe's lookup, refusing an unknown name with the name cut short."""
        self._check_served(name)
        return super().get_model_from_registry(name)

    async def get_model(self, name: str) -> Any:
        """KServe's lookup (and lazy load), refusing an unknown name with the name cut short."""
        self._check_served(name)
        return await super().get_model(name)

    async def model_ready(
        self, model_name: str, disable_predictor_health_check: bool = False
    ) -> bool:
        """KServe's readiness of one model, refusing an unknown name with the name cut short."""
        self._check_served(model_name)
        return await super().model_ready(model_name, disable_predictor_health_check)

    def _check_served(self, name: str) -> None:
        # KServe puts the whole name from the URL into the 404's message and its log line
        # (11 MB of stderr for 27k requests with long names): a name is quoted only so far.
        if self._model_registry.get_model(name) is None:
            raise ModelNotFound(quoted(name))

    def metadata(self) -> dict[str, Any]:
        """KServe's server metadata, without the model repository extension."""
        metadata: dict[str, Any] = super().metadata()
        metadata["extensions"] = [
            e for e in metadata.get("extensions", []) if e != "model_repository_extension"
        ]
        return metadata


class LocalModelServer(ModelServer):
    """KServe's ModelServer, REST only, bound to ``host`` instead of every interface."""

    def __init__(
        self,
        host: str,
        limits: ConnectionLimits,
        shares: ConnectionShares | None = None,
        **kwargs: Any,
    ) -> None:
        """Create the server; ``kwargs`` go to ``kserve.ModelServer``.

        Args:
            host: Address to bind.
            limits: Bounds on client connections.
            shares: The workers' open connections (several workers), to spread them evenly.
            **kwargs: For ``kserve.ModelServer``.
        """
        super().__init__(**kwargs)
        self.host = host
        self.limits = limits
        self.shares = shares
        self.dataplane = LocalDataPlane(model_registry=self.registered_models)

    def start(self, models: list[Any], sockets: list[socket.socket] | None = None) -> None:
        """Register ``models`` and serve until SIGINT/SIGTERM (KServe's single-worker path).

        Args:
            models: The models to serve.
            sockets: Listening sockets to accept from (a forked worker's); None binds the port.
        """
        self._register(models)
        rest = RESTServer(
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
        )
        # RESTServer hard-codes 0.0.0.0; uvicorn reads the host only when it binds.
        rest.config.host = self.host
        # uvicorn's own protocol (httptools) with the bounds it lacks; see serving.limits.
        rest.config.http = bounded_protocol(self.limits, self.shares)
        self._rest_server = rest
        self.servers.append(rest.start() if sockets is None else _serve_on(rest, sockets))
        # KServe hands `event_loop` to uvicorn's config but then starts with asyncio.run, which
        # ignores it (and configures a loop it does not run on): run on the loop uvicorn would
        # pick (uvloop when installed) and configure that one.
        with asyncio.Runner(loop_factory=rest.config.get_loop_factory()) as runner:
            asyncio.set_event_loop(runner.get_loop())
            self.setup_event_loop()
            self.register_signal_handler()
            runner.run(self._serve())

    def _register(self, models: list[Any]) -> None:
        """Register and start ``models`` even when none is ready yet.

        KServe's ``ModelServer`` registers only ready models and refuses to start without one
        (``_register_and_check_atleast_one_model_is_ready``, kserve v0.20.0
        ``python/kserve/kserve/model_server.py``). The canary router is registered whatever its
        revisions' state: one that failed to load is answered 503 with ``Retry-After`` and
        loaded again by the router's retries, at start as at run time.
        """
        for model in models:
            self.register_model(model)
            model.enable_latency_logging = self.enable_latency_logging
            model.start()


class RetryAfterMiddleware:
    """Add ``Retry-After`` (the router's next load) to a 503 that has none.

    KServe answers 503 for a model that is not ready (``model_not_ready_handler``) without
    saying when to come back; the router knows when it loads a failed revision again.
    """

    def __init__(self, app: Any, router: CanaryRouter) -> None:
        """Wrap ``app``; ``router`` says when its next load is due."""
        self.app, self.router = app, router

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:  # noqa: D102
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_retry_after(message: Any) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"retry-after" for name, _ in headers):
                    seconds = str(int(self.router.retry_after_s())).encode()
                    message = {**message, "headers": [*headers, (b"retry-after", seconds)]}
            await send(message)

        await self.app(scope, receive, send_with_retry_after)


async def _serve_on(rest: RESTServer, sockets: list[socket.socket]) -> None:
    """``RESTServer.start`` on sockets already listening (``RESTServer.start`` binds its own)."""
    import uvicorn

    rest.create_application()
    await uvicorn.Server(rest.config).serve(sockets=sockets)


class ServingCollector(Collector):
    """Traffic split and drift of the live revisions, computed when Prometheus scrapes."""

    def __init__(self, router: CanaryRouter) -> None:
        """Report on ``router``'s live revisions."""
        self.router = router

    def collect(self) -> Iterator[Metric]:
        """Yield ``mlops_revision_traffic_percent``, ``mlops_feature_psi``, ``mlops_drift_rows``."""
        labels = ["model", "revision", "model_version"]
        traffic = GaugeMetricFamily(
            "mlops_revision_traffic_percent",
            "Share of traffic per revision",
            labels=[*labels, "tag"],
        )
        psi = GaugeMetricFamily(
            "mlops_feature_psi",
            "Population stability index of served inputs vs the training reference",
            labels=[*labels, "feature"],
        )
        rows = GaugeMetricFamily("mlops_drift_rows", "Rows in the drift statistics", labels=labels)
        for route in self.router.routes.routes:
            revision = route.model.revision
            values = [self.router.name, revision.name, revision.model_version]
            traffic.add_metric([*values, route.tag], route.percent)
            monitor = route.model.drift
            if monitor is None:
                continue
            rows.add_metric(values, monitor.rows)
            for feature in monitor.report():
                psi.add_metric([*values, feature.feature], feature.psi)
        yield traffic
        yield psi
        yield rows


# A rejection's message is logged this far at most (the messages name fields, not values).
_LOGGED_CHARS = 300


class _NoTracebackForBadRequests(logging.Filter):
    """KServe logs every handled error with a traceback; a client's mistake needs one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], InvalidInput | ModelNotFound):
            message = str(record.exc_info[1])
            if len(message) > _LOGGED_CHARS:
                message = f"{message[:_LOGGED_CHARS]}... ({len(message)} characters)"
            record.msg, record.args = "rejected request: %s", (message,)
            record.exc_info = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


# The Host a browser sends to a loopback server. Any other name reaching it is DNS rebinding: a web
# page whose own host name now resolves to 127.0.0.1, which the browser treats as same-origin.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")

_REPOSITORY_REFUSED = (
    "the model repository extension is not served here: the revisions follow the "
    "InferenceService (mlops run deploys, mlops promote / rollback move traffic)"
)


def _metrics_of_every_worker(router: CanaryRouter) -> Any:
    """A ``/metrics`` handler adding up every worker's counters and histograms.

    The counters come from the workers' files (``MultiProcessCollector``); the gauges of
    ``ServingCollector`` are computed by the worker that answers, so each appears once.
    """
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry)
    registry.register(ServingCollector(router))

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics


async def _no_repository(request: Request) -> JSONResponse:
    return JSONResponse({"error": _REPOSITORY_REFUSED}, status_code=404)


async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
    """A body cut off (the client left, or ``serving.limits`` timed it out): no traceback.

    Nothing reaches the client; the status and error are for the request log.
    """
    error = "the request body did not arrive in full: the client disconnected or was too slow"
    return JSONResponse({"error": error}, status_code=408)


def install(
    app: FastAPI,
    router: CanaryRouter,
    dataplane: DataPlane,
    max_body_bytes: int,
    auth_token: str | None = None,
    host: str = "127.0.0.1",
) -> None:
    """Add the version routes, middleware and handlers to KServe's app (before it starts).

    Registered before KServe's own routes, the ``/v2/repository/...`` route here is the one
    that matches: KServe's load/unload handlers are never reached. Bound to loopback, the
    server answers only requests addressed to a loopback name (400 otherwise).
    """
    app.add_api_route(
        "/v2/repository/{path:path}",
        _no_repository,
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )
    if multiprocess_metrics():
        # Before KServe's own /metrics, which would show only the answering worker's figures.
        app.add_api_route(
            "/metrics", _metrics_of_every_worker(router), methods=["GET"], include_in_schema=False
        )
    else:
        REGISTRY.register(ServingCollector(router))
    app.include_router(V2Routes(router, dataplane).api_router())
    mount_form(app, lambda: router_schema(router))
    install_docs(app, router.name)
    # The last added runs first: requests are logged and counted, then authenticated.
    if is_loopback(host):
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS)
    app.add_middleware(AuthMiddleware, token=auth_token)
    app.add_middleware(RetryAfterMiddleware, router=router)
    app.add_middleware(
        ObservabilityMiddleware,
        max_body_bytes=max_body_bytes,
        model_names=frozenset({router.name}),
    )
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(RevisionUnavailable, revision_unavailable_handler)


def _configure_logging() -> None:
    from kserve.logging import configure_logging

    kserve_logger = logging.getLogger("kserve")
    if not kserve_logger.handlers:
        configure_logging()
    # One JSON line per request is the request log; KServe's per-request trace and uvicorn's
    # access lines would repeat it in another format.
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    kserve_logger.addFilter(_NoTracebackForBadRequests())
    ours = logging.getLogger("mlops.serving")
    ours.setLevel(logging.INFO)
    ours.propagate = False
    if not ours.handlers:
        ours.handlers = list(kserve_logger.handlers)
    configure_request_log(_line_writer(sys.stdout))
    # KServe's v1 route still returns ORJSONResponse, which FastAPI now warns about per process.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")


class LineWriter:
    """A text stream writing each ``write`` in one system call, unbuffered.

    The request log's handler writes a line and its newline in one ``write``: several worker
    processes on the same stdout then never interleave their lines (a pipe write of up to
    PIPE_BUF bytes is atomic, and Linux appends each write to a shared file as a whole).
    """

    def __init__(self, fd: int) -> None:
        """Write to file descriptor ``fd``."""
        self.fd = fd

    def write(self, text: str) -> int:
        """Write ``text`` at once (retrying only the rest of a partial write)."""
        data = memoryview(text.encode())
        while data:
            data = data[os.write(self.fd, data) :]
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered."""


def _line_writer(stream: Any) -> Any:
    """``stream`` as a ``LineWriter`` when it is a real file, else ``stream`` itself."""
    try:
        return LineWriter(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return stream


def _check_port(host: str, port: int) -> None:
    """Fail in one line before loading anything when the port is taken."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise OSError(
                f"cannot listen on {host}:{port} ({err.strerror}): another server may be running "
                "there; stop it or pass --port"
            ) from err


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/v2/health/live", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _record_server(settings: ServerSettings) -> bool:
    """Record this server's URL in the state, unless another server there still answers.

    Returns:
        Whether the URL was recorded (and must be forgotten when this server stops).
    """
    state = local_controller.read_state(settings.name, settings.state_dir)
    recorded = state.get("server", {}).get("url")
    if recorded and recorded != settings.url and _answers(recorded):
        logging.getLogger("mlops.serving").warning(
            "the state keeps pointing at %s, which still answers; mlops predict and mlops get "
            "use that server unless given --url %s",
            recorded,
            settings.url,
        )
        return False
    local_controller.record_server(settings.name, settings.url, settings.state_dir)
    return True


def _worker(
    server: LocalModelServer, router: CanaryRouter, sock: socket.socket
) -> Callable[[int], None]:
    """What each forked worker runs: serve from ``sock`` as worker ``slot``."""

    def serve(slot: int) -> None:
        if server.shares is not None:
            server.shares.reset(slot)
        server.start([router], sockets=[sock])

    return serve


def run_server(settings: ServerSettings) -> None:
    """Serve ``settings.name`` from the local state until interrupted.

    The server's URL goes into the state once its revisions are loaded, and out again when it
    stops (if it is still the one recorded).

    Raises:
        local_controller.NotDeployedError: When nothing named ``settings.name`` is deployed.
        OSError: When the port is taken.
    """
    import kserve.model_server

    if settings.workers > 1 and not multiprocess_metrics():
        raise RuntimeError(
            "several workers need prometheus_client's multiprocess mode, set before it is "
            "imported (serving.workers.use_private_metrics_dir)"
        )
    # Several workers accept from one socket bound here; one worker lets uvicorn bind.
    sock = listening_socket(settings.host, settings.port) if settings.workers > 1 else None
    if sock is None:
        _check_port(settings.host, settings.port)
    _configure_logging()
    limits = fit_to_open_file_limit(settings.limits)
    router = CanaryRouter(settings.name, settings.state_dir, settings.poll_interval_s)
    router.load()
    if not router.ready:
        # Served anyway, as at run time: 503 with Retry-After while the router retries.
        isvc = local_controller.read_state(settings.name, settings.state_dir)["inferenceService"]
        conditions = isvc.get("status", {}).get("conditions", [])
        why = "; ".join(c.get("message", "") for c in conditions if c.get("message"))
        logging.getLogger("mlops.serving").error(
            "no revision of %r that takes traffic could be loaded (%s): serving 503 with "
            "Retry-After and loading it again (1 s, doubling, at most 60 s apart)",
            settings.name,
            why or "unknown",
        )
    shares = ConnectionShares(settings.workers) if sock is not None else None
    server = LocalModelServer(
        settings.host,
        limits,
        shares,
        http_port=settings.port,
        enable_grpc=False,
        enable_latency_logging=False,
        enable_docs_url=False,
    )
    install(
        kserve.model_server.app,
        router,
        server.dataplane,
        settings.max_body_bytes,
        settings.auth_token,
        settings.host,
    )
    # What is loaded now lives as long as the server: keep it out of the collector's full
    # passes, which otherwise walk every object of KServe, FastAPI and the models.
    gc.collect()
    gc.freeze()
    recorded = _record_server(settings)
    try:
        if sock is None:
            server.start([router])
        elif serve_forked(settings.workers, _worker(server, router, sock), sock):
            raise RuntimeError("a worker of the server failed at start: see the log above")
    finally:
        if recorded:
            local_controller.forget_server(settings.name, settings.url, settings.state_dir)
