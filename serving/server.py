"""The local model server: KServe's ``ModelServer`` with the canary router and what it needs.

KServe's own server answers v1 and v2 and ``/metrics``; this adds, on the same FastAPI app:
the ``/versions/{version}`` routes (KServe's answer "Model versioning not supported yet"),
the request-size limit, per-revision metrics and JSON request logs, drift gauges, and 422s
for request bodies that do not parse, in KServe's ``{"error": ...}`` shape.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve import ModelServer
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING, PredictorProtocol
from kserve.errors import InferenceError, InvalidInput, ModelNotFound, ModelNotReady
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferResponse
from kserve.protocol.rest.server import RESTServer
from kserve.protocol.rest.v2_datamodels import InferenceRequest, InferenceResponse
from kserve.protocol.rest.v2_endpoints import V2Endpoints
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import ValidationError

from serving import local_controller
from serving.observability import ObservabilityMiddleware, configure_request_log
from serving.runtime import CanaryRouter, VersionNotFound, pinned_version

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
    """

    name: str
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    poll_interval_s: float = 0.5
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be within 1..65535, got {self.port}")
        if not 0 < self.poll_interval_s <= 60:
            raise ValueError(f"poll_interval_s must be within (0, 60], got {self.poll_interval_s}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")

    @property
    def url(self) -> str:
        """The base URL clients use."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"


class LocalModelServer(ModelServer):
    """KServe's ModelServer, REST only, bound to ``host`` instead of every interface."""

    def __init__(self, host: str, **kwargs: Any) -> None:
        """Create the server; ``kwargs`` go to ``kserve.ModelServer``."""
        super().__init__(**kwargs)
        self.host = host

    def start(self, models: list[Any]) -> None:
        """Register ``models`` and serve until SIGINT/SIGTERM (KServe's single-worker path)."""
        self._register_and_check_atleast_one_model_is_ready(models)
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
        self._rest_server = rest
        self.servers.append(rest.start())
        # KServe hands `event_loop` to uvicorn's config but then starts with asyncio.run, which
        # ignores it (and configures a loop it does not run on): run on the loop uvicorn would
        # pick (uvloop when installed) and configure that one.
        with asyncio.Runner(loop_factory=rest.config.get_loop_factory()) as runner:
            asyncio.set_event_loop(runner.get_loop())
            self.setup_event_loop()
            self.register_signal_handler()
            runner.run(self._serve())


async def read_infer_body(raw_request: Request) -> InferenceRequest | bytes:
    """The body of a v2 infer request, parsed as KServe's route would, but faster.

    KServe's route lets FastAPI parse the JSON with the standard library, which takes about
    10 ms for 1000 rows of 30 floats; orjson takes about 1.5 ms. A binary-extension body
    (``Inference-Header-Content-Length``) stays bytes for KServe to decode.

    Raises:
        RequestValidationError: When the body is not JSON or not a v2 inference request (422).
    """
    body = await raw_request.body()
    if "inference-header-content-length" in raw_request.headers:
        return body
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        try:
            # NaN and Infinity literals are not JSON, but Python's json module writes them:
            # parse them, so that the checks can say which feature is not finite.
            data = json.loads(body)
        except ValueError:
            error = {"type": "json_invalid", "loc": ("body", err.pos), "msg": "JSON decode error"}
            raise RequestValidationError([{**error, "ctx": {"error": err.msg}}]) from err
    try:
        return InferenceRequest.model_validate(data)
    except ValidationError as err:
        raise RequestValidationError(err.errors(include_url=False)) from err


def _as_json(result: InferenceResponse | Response, raw_response: Response) -> Response:
    """Serialize with pydantic in one call.

    Returned as a model, FastAPI would walk it with ``jsonable_encoder`` value by value
    (about 1.5 ms for 1000 outputs). A returned ``Response`` skips the merge of the headers
    set on ``raw_response`` (which name the revision), so they are copied here.
    """
    if isinstance(result, Response):
        return result
    headers = {k: v for k, v in raw_response.headers.items() if k != "content-length"}
    return Response(result.model_dump_json(), media_type="application/json", headers=headers)


_BODY_HEADERS = ("content-length", "content-type")


def _rest_response(response: InferResponse) -> dict[str, Any]:
    """The v2 JSON answer, with the keys KServe's ``InferenceResponse`` writes."""
    outputs = []
    for output in response.outputs:
        data = output.data
        outputs.append(
            {
                "name": output.name,
                "shape": output.shape,
                "datatype": output.datatype,
                "parameters": output.parameters or None,
                # v2 JSON tensors are flat, row-major.
                "data": data.ravel() if isinstance(data, np.ndarray) else data,
            }
        )
    return {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "parameters": response.parameters or None,
        "outputs": outputs,
    }


class V2Routes:
    """v2 routes in front of KServe's: fast infer, and the ``/versions/{version}`` forms.

    KServe's own ``/versions/{version}`` handlers answer "Model versioning not supported yet";
    these pin the request to one revision, as KServe's tag routing does in the cluster.
    """

    def __init__(self, router: CanaryRouter, dataplane: DataPlane) -> None:
        """Answer for ``router`` through KServe's own v2 handlers."""
        self.router = router
        self.dataplane = dataplane
        self.v2 = V2Endpoints(dataplane)

    def _check(self, model_name: str, model_version: str | None) -> None:
        if model_name != self.router.name:
            raise ModelNotFound(model_name)
        if model_version is not None and self.router.find(model_version) is None:
            raise VersionNotFound(
                f"model {model_name!r} has no live version {model_version!r}: live versions "
                f"are {self.router.routes.describe()}"
            )

    async def infer(
        self, raw_request: Request, raw_response: Response, model_name: str
    ) -> Response:
        """Infer with the revision the traffic split picks."""
        self._check(model_name, None)
        body = await read_infer_body(raw_request)
        return await self._answer(raw_request, raw_response, model_name, body)

    async def infer_version(
        self, raw_request: Request, raw_response: Response, model_name: str, model_version: str
    ) -> Response:
        """Infer with one revision: a store version, a revision name, ``latest`` or ``prev``."""
        self._check(model_name, None)
        body = await read_infer_body(raw_request)
        with pinned_version(model_version):
            return await self._answer(raw_request, raw_response, model_name, body)

    async def _answer(
        self,
        raw_request: Request,
        raw_response: Response,
        model_name: str,
        body: InferenceRequest | bytes,
    ) -> Response:
        if (
            isinstance(body, bytes)
            or body.outputs
            or (body.parameters or {}).get("binary_data_output")
        ):
            # Binary tensors or chosen outputs: KServe's own handler and encoder, as they are.
            result = await self.v2.infer(raw_request, raw_response, model_name, body)
            return _as_json(result, raw_response)
        # KServe's handler, step by step, but the JSON answer is written by orjson from the
        # output arrays: KServe's encoder turns each array into a list value by value, then
        # pydantic checks and serializes that list again (a tenth of a 1000-row request).
        if not await self.dataplane.model_ready(model_name, True):
            raise ModelNotReady(model_name)
        headers = dict(raw_request.headers)
        request, _ = self.dataplane.decode(
            body, headers, protocol_version=PredictorProtocol.REST_V2.value, model_name=model_name
        )
        response, response_headers = await self.dataplane.infer(
            model_name=model_name, request=request, headers=headers
        )
        if not isinstance(response, InferResponse):
            raise InferenceError(f"model {model_name!r} answered {type(response).__name__}")
        return Response(
            orjson.dumps(_rest_response(response), option=orjson.OPT_SERIALIZE_NUMPY),
            media_type="application/json",
            headers={k: v for k, v in response_headers.items() if k not in _BODY_HEADERS},
        )

    async def ready(self, model_name: str, model_version: str) -> dict[str, Any]:
        """Whether the version is live."""
        self._check(model_name, model_version)
        return {"name": model_name, "ready": True}

    async def metadata(self, model_name: str, model_version: str | None = None) -> dict[str, Any]:
        """KServe's model metadata, plus the live ``versions``."""
        self._check(model_name, model_version)
        metadata = await self.dataplane.model_metadata(model_name)
        versions = [model_version] if model_version else self.router.versions()
        return {**metadata, "versions": versions}

    def api_router(self) -> APIRouter:
        """The routes, to be included before KServe registers its own (the first match wins)."""
        routes = APIRouter(prefix="/v2/models/{model_name}", tags=["V2"])
        routes.add_api_route("", self.metadata, methods=["GET"])
        routes.add_api_route("/infer", self.infer, methods=["POST"], response_model=None)
        routes.add_api_route("/versions/{model_version}", self.metadata, methods=["GET"])
        routes.add_api_route("/versions/{model_version}/ready", self.ready, methods=["GET"])
        routes.add_api_route(
            "/versions/{model_version}/infer",
            self.infer_version,
            methods=["POST"],
            response_model=None,
        )
        return routes


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


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    """A body FastAPI cannot parse: 422 with one readable line, in KServe's error shape."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    parts = []
    for error in errors:
        location = [str(p) for p in error.get("loc", ()) if p != "body"]
        if error.get("type") == "json_invalid":
            detail = error.get("ctx", {}).get("error", "")
            at = f" at character {location[0]}" if location else ""
            parts.append(f"the body is not valid JSON{at}: {detail}")
            break
        if location and location[0] == "bytes":
            continue  # the other member of KServe's Union[InferenceRequest, bytes] body
        field = ".".join(location).removeprefix("InferenceRequest.") or "body"
        parts.append(f"{field}: {error.get('msg')}")
    message = "; ".join(parts[:3]) or str(exc)
    return JSONResponse(status_code=422, content={"error": f"invalid request: {message}"})


class _NoTracebackForBadRequests(logging.Filter):
    """KServe logs every handled error with a traceback; a client's mistake needs one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], InvalidInput | ModelNotFound):
            record.msg, record.args = "rejected request: %s", (record.exc_info[1],)
            record.exc_info = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def install(app: FastAPI, router: CanaryRouter, dataplane: DataPlane, max_body_bytes: int) -> None:
    """Add the version routes, middleware and handlers to KServe's app (before it starts)."""
    app.include_router(V2Routes(router, dataplane).api_router())
    app.add_middleware(ObservabilityMiddleware, max_body_bytes=max_body_bytes)
    app.add_exception_handler(RequestValidationError, _validation_error)
    REGISTRY.register(ServingCollector(router))


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
    configure_request_log()
    # KServe's v1 route still returns ORJSONResponse, which FastAPI now warns about per process.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")


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


def run_server(settings: ServerSettings) -> None:
    """Serve ``settings.name`` from the local state until interrupted.

    Raises:
        local_controller.NotDeployedError: When nothing named ``settings.name`` is deployed.
        RuntimeError: When no revision could be loaded.
        OSError: When the port is taken.
    """
    import kserve.model_server

    _check_port(settings.host, settings.port)
    _configure_logging()
    local_controller.record_server(settings.name, settings.url, settings.state_dir)
    router = CanaryRouter(settings.name, settings.state_dir, settings.poll_interval_s)
    router.load()
    if not router.ready:
        isvc = local_controller.read_state(settings.name, settings.state_dir)["inferenceService"]
        conditions = isvc.get("status", {}).get("conditions", [])
        why = "; ".join(c.get("message", "") for c in conditions if c.get("message"))
        raise RuntimeError(f"no revision of {settings.name!r} could be loaded: {why or 'unknown'}")
    server = LocalModelServer(
        settings.host,
        http_port=settings.port,
        enable_grpc=False,
        enable_latency_logging=False,
        enable_docs_url=False,
    )
    install(kserve.model_server.app, router, server.dataplane, settings.max_body_bytes)
    # What is loaded now lives as long as the server: keep it out of the collector's full
    # passes, which otherwise walk every object of KServe, FastAPI and the models.
    gc.collect()
    gc.freeze()
    server.start([router])
