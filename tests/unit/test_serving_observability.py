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
    _default_to_json,
    _error_message,
    _model_from_path,
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


def test_a_body_without_the_binary_header_is_read_as_json() -> None:
    scope: dict[str, Any] = {"headers": [(b"content-type", b"text/plain")]}
    _default_to_json(scope, dict(scope["headers"]))
    assert scope["headers"] == [(b"content-type", b"application/json")]
    binary = {"headers": [(b"inference-header-content-length", b"10")]}
    _default_to_json(binary, dict(binary["headers"]))
    assert binary["headers"] == [(b"inference-header-content-length", b"10")]


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
