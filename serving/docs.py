"""``/docs`` (Swagger UI) and an ``/openapi.json`` that lists only the routes that answer.

KServe's ``--enable_docs_url`` turns on FastAPI's ``/docs``, whose page loads Swagger UI from a
CDN (cdn.jsdelivr.net) and starts it with an inline script. Here no CDN need be reachable and
the page keeps a strict Content-Security-Policy: Swagger UI's files come from the
``swagger-ui-bundle-v2`` package (the Swagger UI release its version names, as connexion ships
it), served from this origin, and the start-up script is a file too, so the policy allows
scripts and styles from ``'self'`` only, with no inline code.

KServe registers its own routes after the ones added here, and FastAPI answers with the first
route that matches; FastAPI's schema would still list the later ones (the model repository's
load/unload routes, which answer 404 here). The schema lists only first matches.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, compile_path

DOCS_PATH = "/docs"
OPENAPI_PATH = "/openapi.json"
# The Swagger UI files the page loads, by the name it asks for them.
_ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
}
# What FastAPI's own page passes to SwaggerUIBundle (fastapi/openapi/docs.py,
# swagger_ui_default_parameters), from a file instead of an inline script.
_INIT = """"use strict";
window.ui = SwaggerUIBundle({
  url: "%s",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
"""
_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>%s - Swagger UI</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"""
# Swagger UI draws its icons as data: SVGs and fetches the schema (and "Try it out") from here.
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_HEADERS = {
    "content-security-policy": POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


@functools.cache
def _swagger_ui_dir() -> Path:
    import swagger_ui_bundle

    return Path(str(swagger_ui_bundle.swagger_ui_path))


def reachable_routes(routes: list[BaseRoute]) -> list[RouteContext]:
    """The API routes a request can reach: none that an earlier route matches first.

    An earlier route shadows a later one when they share a method and the earlier one's path
    pattern matches the later one's path (``/v2/repository/{path:path}`` matches
    ``/v2/repository/models/{model_name}/load``; two ``/v2/models/{model_name}/infer`` match
    each other). Included routers are walked as FastAPI's own schema walks them.
    """
    kept: list[RouteContext] = []
    earlier: list[tuple[set[str], re.Pattern[str]]] = []
    for context in iter_route_contexts(routes):
        path, methods = context.path, set(context.methods or ())
        if not path or not methods:
            continue
        shadowed = any(m & methods and rx.match(context.path_format or path) for m, rx in earlier)
        earlier.append((methods, compile_path(path)[0]))
        if not shadowed and isinstance(context.original_route, APIRoute):
            kept.append(context)
    return kept


def install_docs(app: FastAPI, title: str) -> None:
    """Serve ``/docs`` and make ``app``'s ``/openapi.json`` list only reachable routes.

    Args:
        app: KServe's FastAPI app, before KServe adds its routes.
        title: The page's title (the served model).
    """

    def openapi() -> dict[str, Any]:
        # Built on the first request, once KServe's routes are all there.
        if app.openapi_schema is None:
            app.openapi_schema = get_openapi(
                title=app.title,
                version=app.version,
                routes=reachable_routes(app.routes),
            )
        return app.openapi_schema

    app.openapi_schema = None
    app.openapi = openapi  # type: ignore[method-assign]
    page = (_PAGE % title.replace("&", "&amp;").replace("<", "&lt;")).encode()
    init = (_INIT % OPENAPI_PATH).encode()

    async def docs(_: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=_HEADERS)

    async def init_script(_: Request) -> Response:
        return Response(init, media_type="text/javascript; charset=utf-8", headers=_HEADERS)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _ASSETS:
            return JSONResponse({"error": f"no such file under {DOCS_PATH}/"}, status_code=404)
        body = _read_asset(name)
        headers = {**_HEADERS, "cache-control": "max-age=3600"}
        return Response(body, media_type=_ASSETS[name], headers=headers)

    async def schema(_: Request) -> JSONResponse:
        return JSONResponse(openapi())

    if app.openapi_url is None:  # pragma: no cover - KServe's app keeps FastAPI's default
        app.add_api_route(OPENAPI_PATH, schema, methods=["GET"], include_in_schema=False)
    app.add_api_route(DOCS_PATH, docs, methods=["GET"], include_in_schema=False)
    app.add_api_route(f"{DOCS_PATH}/init.js", init_script, methods=["GET"], include_in_schema=False)
    app.add_api_route(f"{DOCS_PATH}/{{name}}", asset, methods=["GET"], include_in_schema=False)


@functools.cache
def _read_asset(name: str) -> bytes:
    return (_swagger_ui_dir() / name).read_bytes()
