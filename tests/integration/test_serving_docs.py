"""`mlops serve` answers `/docs` (Swagger UI from the package, under a strict CSP) and its
`/openapi.json` lists only routes that answer (issue 17 item 8)."""

from __future__ import annotations

import httpx

from tests.integration.serving_helpers import NAME, Served

pytest_plugins = ["tests.integration.serving_fixtures"]


def _url(path: str) -> str:
    return path.replace("{model_name}", NAME).replace("{model_version}", "2")


def test_every_route_the_schema_lists_answers(canary_server: Served) -> None:
    schema = httpx.get(f"{canary_server.url}/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert not [p for p in paths if p.startswith("/v2/repository")]
    assert "/v2/models/{model_name}/infer" in paths
    answers = {}
    for path, operations in paths.items():
        for method in operations:
            response = httpx.request(method, canary_server.url + _url(path), json={})
            answers[(method, path)] = response.status_code
    assert answers and not {k: v for k, v in answers.items() if v in (404, 405)}, answers


def test_docs_serve_swagger_ui_from_this_origin_under_a_strict_policy(
    canary_server: Served,
) -> None:
    page = httpx.get(f"{canary_server.url}/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "unsafe" not in policy
    assert "<script>" not in page.text and "http" not in page.text.split("<body>")[1]
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "init.js"):
        response = httpx.get(f"{canary_server.url}/docs/{asset}")
        assert response.status_code == 200 and len(response.content) > 100, asset
    assert "/openapi.json" in httpx.get(f"{canary_server.url}/docs/init.js").text
    assert httpx.get(f"{canary_server.url}/docs/../../etc/passwd").status_code == 404
    assert httpx.get(f"{canary_server.url}/docs/index.html").status_code == 404
