"""The observability middleware: size limit, request ids, log lines, content types."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from serving.observability import (
    ObservabilityMiddleware,
    RequestInfo,
    _error_message,
    _model_from_path,
    _refused_content_type,
    current_request,
)


def test_inference_paths_name_their_model() -> None:
    assert _model_from_path("/v2/models/m/infer") == "m"
    assert _model_from_path("/v2/models/m/versions/2/infer") == "m"
    assert _model_from_path("/v1/models/m:predict") == "m"
    assert _model_from_path("/v2/models/m/ready") is None
    assert _model_from_path("/metrics") is None


def test_error_bodies_become_one_message() -> None:
    assert _error_message(b'{"error": "bad shape"}') == "bad shape"
    assert _error_message(b'{"detail": "nope"}') == "nope"
    assert _error_message(b"plain text") == "plain text"


def refusal(*headers: tuple[bytes, bytes]) -> tuple[str | None, list[tuple[bytes, bytes]]]:
    scope: dict[str, Any] = {"method": "POST", "headers": list(headers)}
    return _refused_content_type(scope, dict(scope["headers"])), scope["headers"]


def test_only_json_and_the_binary_extensions_content_type_reach_a_model() -> None:
    assert refusal((b"content-type", b"application/json; charset=utf-8"))[0] is None
    binary = (b"inference-header-content-length", b"10")
    assert refusal(binary, (b"content-type", b"application/octet-stream")) == (
        None,
        [binary, (b"content-type", b"application/octet-stream")],
    )
    # What a web page of any origin posts without a CORS preflight (issue 19).
    for simple in (b"text/plain", b"application/x-www-form-urlencoded", b"multipart/form-data"):
        reason, _ = refusal((b"content-type", simple), (b"sec-fetch-site", b"same-site"))
        assert reason == (
            "unsupported content type: send the request body as application/json (or, with "
            "Inference-Header-Content-Length, application/octet-stream)"
        )
    assert refusal(binary, (b"content-type", b"text/plain"))[0] is not None
    assert refusal((b"content-type", b"application/cloudevents+json"))[0] is not None


def test_a_body_without_a_content_type_is_json_only_when_no_browser_sent_it() -> None:
    # tritonclient.http sends JSON with no content type: read as JSON for KServe's route.
    assert refusal() == (None, [(b"content-type", b"application/json")])
    binary = (b"inference-header-content-length", b"10")
    assert refusal(binary) == (None, [binary])
    # A page's fetch() of an ArrayBuffer has no content type and no preflight either.
    assert refusal((b"origin", b"http://localhost:9999"))[0] is not None
    assert refusal((b"sec-fetch-site", b"same-site"))[0] is not None


def call(
    middleware: ObservabilityMiddleware, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
) -> list[dict[str, Any]]:
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    chunks = [body[i : i + 10] for i in range(0, len(body), 10)] or [b""]
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(middleware(scope, receive, send))
    return sent


async def echo_app(scope: Any, receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    info = current_request()
    if info is not None:
        info.revision, info.model_version, info.rows = "rev-2", "2", 3
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_an_inference_request_gets_an_id_and_one_json_log_line(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    middleware = ObservabilityMiddleware(echo_app, max_body_bytes=100)
    monkeypatch.setattr(logging.getLogger("mlops.serving.requests"), "propagate", True)
    with caplog.at_level(logging.INFO, logger="mlops.serving.requests"):
        sent = call(middleware, "/v2/models/m/infer", b"{}", [(b"x-request-id", b"abc")])
    assert (b"x-request-id", b"abc") in sent[0]["headers"]
    (line,) = [json.loads(r.getMessage()) for r in caplog.records]
    assert line["request_id"] == "abc" and line["revision"] == "rev-2" and line["rows"] == 3
    assert line["status"] == 200 and line["model"] == "m" and "error" not in line
    assert set(RequestInfo.__dataclass_fields__) - {"error"} <= set(line)


async def failing_app(scope: Any, receive: Any, send: Any) -> None:
    raise TypeError("unsupported datatype in numpy array: SECRET-4711")


def test_an_exception_past_every_handler_is_a_500_in_the_log_and_the_metrics(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.observability import ERRORS, REQUESTS

    middleware = ObservabilityMiddleware(failing_app, max_body_bytes=100)
    monkeypatch.setattr(logging.getLogger("mlops.serving.requests"), "propagate", True)
    before = REQUESTS.labels("_unknown", "none", "", "500")._value.get()
    with caplog.at_level(logging.INFO, logger="mlops.serving.requests"):
        with pytest.raises(TypeError):  # Starlette's ServerErrorMiddleware answers it
            call(middleware, "/v2/models/m/infer", b"{}", [])
    (line,) = [json.loads(r.getMessage()) for r in caplog.records]
    assert line["status"] == 500
    assert line["error"] == "the server failed: TypeError"
    assert REQUESTS.labels("_unknown", "none", "", "500")._value.get() == before + 1
    assert ERRORS.labels("_unknown", "none", "", "500")._value.get() >= 1


def test_a_text_plain_post_gets_415_and_never_reaches_the_model() -> None:
    middleware = ObservabilityMiddleware(failing_app, max_body_bytes=100)
    sent = call(middleware, "/v2/models/m/infer", b"{}", [(b"content-type", b"text/plain")])
    assert sent[0]["status"] == 415
    assert json.loads(sent[1]["body"])["error"].startswith("unsupported content type")


def test_bodies_over_the_limit_get_413_with_or_without_a_length() -> None:
    middleware = ObservabilityMiddleware(echo_app, max_body_bytes=50)
    sent = call(middleware, "/v2/models/m/infer", b"x" * 60, [(b"content-length", b"60")])
    assert sent[0]["status"] == 413
    assert "limit is 50 bytes" in json.loads(sent[1]["body"])["error"]
    chunked = call(middleware, "/v2/models/m/infer", b"x" * 60, [])
    assert chunked[0]["status"] == 413
    small = call(middleware, "/v2/models/m/infer", b"x" * 40, [])
    assert small[0]["status"] == 200 and small[1]["body"] == b"x" * 40


def test_unknown_model_names_share_one_metric_label() -> None:
    from serving.observability import REQUESTS, UNKNOWN_MODEL

    def series() -> set[tuple[str, ...]]:
        return {
            tuple(sample.labels.values())
            for metric in REQUESTS.collect()
            for sample in metric.samples
        }

    middleware = ObservabilityMiddleware(echo_app, max_body_bytes=100, model_names=frozenset({"m"}))
    before = series()
    for i in range(200):
        call(middleware, f"/v2/models/other-{i}/infer", b"{}", [])
    added = series() - before
    assert {labels[0] for labels in added} <= {UNKNOWN_MODEL}
    assert len(added) <= 2  # the `_total` and `_created` samples of one child


def test_a_request_id_that_is_not_a_short_token_is_replaced() -> None:
    middleware = ObservabilityMiddleware(echo_app, max_body_bytes=100)
    for given in (b"a" * 129, b"<b>x</b>", b"a\x01b"):
        sent = call(middleware, "/v2/models/m/infer", b"{}", [(b"x-request-id", given)])
        echoed = dict(sent[0]["headers"])[b"x-request-id"]
        assert echoed != given and len(echoed) == 32
