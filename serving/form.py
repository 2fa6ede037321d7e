"""The web form: a page at ``/`` where a person types in a case and sees the prediction.

The page (``serving/static``: HTML, CSS and JavaScript, no CDN) asks ``/form/schema`` for the
features, their training ranges and real example rows (``reference_statistics`` in the version's
``metadata.json``), then sends one v2 infer request with ``predict_proba`` and shows the class,
its probability and the ``model_version`` that answered. ``GET /`` still answers KServe's
``{"status": "alive"}`` to clients that do not ask for HTML first (probes, curl, httpx).

Two places serve it: ``mlops serve`` (``mount_form`` with ``router_schema``), and, in the
cluster, ``python -m serving.form --upstream URL``: a small frontend that serves the page,
reads the schema from the store and forwards only the infer and metadata calls to the
InferenceService, with bounded bodies and timeouts.
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from mlops.store import StoreError

# form_schema and router_schema are the schema's public names here too (mlops serve, tests).
from serving.form_schema import (  # noqa: F401
    FormUnavailable,
    form_schema,
    router_schema,
    served_schema,
    store_schema,
)

if TYPE_CHECKING:
    import httpx

STATIC = Path(__file__).with_name("static")
SCHEMA_PATH = "/form/schema"
# KServe's own answer to GET /, kept for clients that do not ask for a page.
ALIVE = {"status": "alive"}
DEFAULT_FRONTEND_PORT = 8000
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
# Headers of the model server's answer the page reads; nothing else is passed back.
_ANSWER_HEADERS = ("content-type", "x-mlops-model-version", "x-mlops-revision", "x-request-id")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@functools.cache
def page() -> tuple[bytes, dict[str, str]]:
    """The page with its CSS and JavaScript inlined, and the headers to send it with.

    The Content-Security-Policy allows exactly these inline script and style (by hash) and
    requests to this origin only: nothing else can run or be loaded in the page.
    """
    style, script = (STATIC / "form.css").read_text(), (STATIC / "form.js").read_text()
    html = Template((STATIC / "form.html").read_text()).substitute(style=style, script=script)
    policy = (
        f"default-src 'none'; script-src {_csp_hash(script)}; style-src {_csp_hash(style)}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    headers = {
        "content-security-policy": policy,
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cache-control": "no-cache",
        "vary": "Accept",
    }
    return html.encode(), headers


def prefers_html(accept: str) -> bool:
    """Whether an ``Accept`` header ranks ``text/html`` first (a browser; not curl or probes).

    ``*/*`` alone, or JSON ranked at least as high as HTML, means JSON.
    """
    html = json = 0.0
    for part in accept.lower().split(","):
        media, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media == "text/html":
            html = max(html, quality)
        elif media == "application/json":
            json = max(json, quality)
    return html > 0 and html > json


async def root(request: Request) -> Response:
    """``GET /``: the page for a browser, KServe's ``{"status": "alive"}`` for anyone else."""
    if prefers_html(request.headers.get("accept", "")):
        body, headers = page()
        return Response(body, media_type="text/html; charset=utf-8", headers=headers)
    return JSONResponse(ALIVE, headers={"vary": "Accept"})


def mount_form(app: FastAPI, schema: Callable[[], dict[str, Any]]) -> None:
    """Serve the page at ``/`` and its schema at ``/form/schema`` (before KServe's routes).

    Args:
        app: The FastAPI app.
        schema: Builds the form schema (``router_schema`` or ``store_schema``, bound).
    """

    def schema_route() -> JSONResponse:
        # A plain def: FastAPI runs it in its thread pool, so a store read blocks no request.
        try:
            return JSONResponse(schema())
        except (FormUnavailable, StoreError, ValueError, RuntimeError) as err:
            return JSONResponse({"error": str(err)[:500]}, status_code=503)

    app.add_api_route("/", root, methods=["GET"], include_in_schema=False)
    app.add_api_route(SCHEMA_PATH, schema_route, methods=["GET"], include_in_schema=False)


@dataclass(frozen=True)
class FrontendSettings:
    """The cluster frontend: where the model answers, where its versions are, how to serve.

    Attributes:
        upstream: The InferenceService's URL, e.g. ``http://breast-cancer.ns.svc.cluster.local``.
        model_name: The served model's name.
        store_uri: The model store the form's ranges and examples are read from.
        host: Address to bind.
        port: HTTP port.
        max_body_bytes: Larger request bodies get 413, larger answers 502.
        timeout_s: How long the model server may take to answer.
        auth_token: Bearer token for everything but the page and ``/`` probes; None for none.
        allow_unauthenticated: Listen on a non-loopback ``host`` without a token.
        namespace: The InferenceService's namespace: the form is the version it serves,
            its metadata signed (``served_schema``); None: the newest version in the store.
    """

    upstream: str
    model_name: str
    store_uri: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_FRONTEND_PORT
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    timeout_s: float = 30.0
    auth_token: str | None = field(default=None, repr=False)
    allow_unauthenticated: bool = False
    namespace: str | None = None

    def __post_init__(self) -> None:
        from serving.auth import check_exposure

        parsed = urlparse(self.upstream)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(
                f"--upstream must be an http(s) URL with a host, got {self.upstream!r}"
            )
        if parsed.path.strip("/") or parsed.query:
            raise ValueError(
                f"--upstream is the server's base URL (no path), got {self.upstream!r}"
            )
        if not 1 <= self.port <= 65535:
            raise ValueError(f"--port must be within 1..65535, got {self.port}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"--max-body-bytes must be at least 1024, got {self.max_body_bytes}")
        if not 0 < self.timeout_s <= 600:
            raise ValueError(f"--timeout must be within (0, 600] seconds, got {self.timeout_s}")
        check_exposure(self.host, self.auth_token, self.allow_unauthenticated)


async def _forward(
    client: httpx.AsyncClient, request: httpx.Request, settings: FrontendSettings
) -> Response:
    """Send ``request`` to the model server; its answer, bounded, or one readable error."""
    import httpx

    where = f"the model server at {settings.upstream}"
    try:
        answer = await client.send(request, stream=True)
    except httpx.TimeoutException:
        return JSONResponse({"error": f"{where} did not answer in time"}, status_code=504)
    except httpx.HTTPError as err:
        return JSONResponse({"error": f"cannot reach {where}: {err}"}, status_code=502)
    try:
        body = bytearray()
        async for chunk in answer.aiter_raw():
            body.extend(chunk)
            if len(body) > settings.max_body_bytes:
                error = f"{where} answered more than {settings.max_body_bytes} bytes"
                return JSONResponse({"error": error}, status_code=502)
    except httpx.HTTPError as err:
        return JSONResponse({"error": f"{where} broke off its answer: {err}"}, status_code=502)
    finally:
        await answer.aclose()
    headers = {k: answer.headers[k] for k in _ANSWER_HEADERS if k in answer.headers}
    return Response(bytes(body), status_code=answer.status_code, headers=headers)


def build_frontend(settings: FrontendSettings) -> FastAPI:
    """The frontend app: the page, the schema from the store, infer and metadata forwarded."""
    import httpx
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from serving.auth import AuthMiddleware, is_loopback
    from serving.observability import ObservabilityMiddleware

    clients: list[httpx.AsyncClient] = []

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        timeout = httpx.Timeout(settings.timeout_s, connect=min(5.0, settings.timeout_s))
        # One retry of a failed connection (httpx's transport retries connects only).
        transport = httpx.AsyncHTTPTransport(retries=1)
        async with httpx.AsyncClient(
            base_url=settings.upstream, timeout=timeout, transport=transport
        ) as client:
            clients.append(client)
            yield

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    if settings.namespace is None:
        schema = functools.partial(store_schema, settings.store_uri, settings.model_name)
    else:
        schema = functools.partial(
            served_schema, settings.store_uri, settings.model_name, settings.namespace
        )
    mount_form(app, schema)

    def check_name(model_name: str) -> JSONResponse | None:
        if model_name == settings.model_name:
            return None
        served = settings.model_name
        error = f"model {model_name!r} is not served here: this frontend serves {served!r}"
        return JSONResponse({"error": error}, status_code=404)

    async def infer(model_name: str, request: Request) -> Response:
        refused = check_name(model_name)
        if refused is not None:
            return refused
        # The body is already bounded (ObservabilityMiddleware); sent as JSON, nothing else.
        forwarded = clients[0].build_request(
            "POST",
            f"/v2/models/{model_name}/infer",
            content=await request.body(),
            headers={"content-type": "application/json"},
        )
        return await _forward(clients[0], forwarded, settings)

    async def metadata(model_name: str) -> Response:
        refused = check_name(model_name)
        if refused is not None:
            return refused
        forwarded = clients[0].build_request("GET", f"/v2/models/{model_name}")
        return await _forward(clients[0], forwarded, settings)

    app.add_api_route("/v2/models/{model_name}/infer", infer, methods=["POST"])
    app.add_api_route("/v2/models/{model_name}", metadata, methods=["GET"])
    if is_loopback(settings.host):
        from serving.server import LOOPBACK_HOSTS

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS)
    app.add_middleware(AuthMiddleware, token=settings.auth_token)
    app.add_middleware(
        ObservabilityMiddleware,
        max_body_bytes=settings.max_body_bytes,
        model_names=frozenset({settings.model_name}),
    )
    return app


def parse_frontend_args(argv: list[str] | None = None) -> FrontendSettings:
    """The frontend's settings from its command line; exits 2 with one line when they are wrong."""
    from mlops.settings import DEFAULT_MODEL_NAME, default_store_uri
    from serving.auth import read_token

    parser = argparse.ArgumentParser(prog="python -m serving.form", description=__doc__)
    parser.add_argument("--upstream", required=True, help="the InferenceService's base URL")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--store-uri", default=None, help="default: MLOPS_STORE_URI")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=DEFAULT_FRONTEND_PORT)
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--timeout", type=float, default=30.0, help="model server answer (s)")
    parser.add_argument("--auth-token-file", type=Path, default=None)
    parser.add_argument("--allow-unauthenticated", action="store_true")
    parser.add_argument(
        "--inference-service-namespace",
        default=None,
        help="show the version the InferenceService serves there (signed metadata), "
        "not the newest in the store",
    )
    args = parser.parse_args(argv)
    try:
        return FrontendSettings(
            upstream=args.upstream,
            model_name=args.model_name,
            store_uri=args.store_uri or default_store_uri(),
            host=args.host,
            port=args.port,
            max_body_bytes=args.max_body_bytes,
            timeout_s=args.timeout,
            auth_token=read_token(args.auth_token_file),
            allow_unauthenticated=args.allow_unauthenticated,
            namespace=args.inference_service_namespace,
        )
    except ValueError as err:
        parser.error(str(err))


def main(argv: list[str] | None = None) -> None:
    """``python -m serving.form --upstream URL``: run the frontend until interrupted."""
    import uvicorn

    from serving.limits import ConnectionLimits, bounded_protocol
    from serving.observability import configure_request_log

    settings = parse_frontend_args(argv)
    configure_request_log()
    config = uvicorn.Config(
        build_frontend(settings),
        host=settings.host,
        port=settings.port,
        http=bounded_protocol(ConnectionLimits()),
        access_log=False,
        server_header=False,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
