"""Bearer-token auth of the local server: reading the token, the exposure check, the middleware."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from serving.auth import AuthMiddleware, check_exposure, is_loopback, read_token

TOKEN = "t" * 20


def test_the_token_comes_from_the_file_first_then_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    assert read_token(path, {"MLOPS_SERVING_TOKEN": "e" * 20}) == TOKEN
    assert read_token(None, {"MLOPS_SERVING_TOKEN": "e" * 20}) == "e" * 20
    assert read_token(None, {}) is None


@pytest.mark.parametrize(
    ("token", "message"),
    [("short", "at least 16"), ("with a space inside it", "without spaces"), ("é" * 20, "ASCII")],
)
def test_a_weak_or_unsendable_token_is_refused(token: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"MLOPS_SERVING_TOKEN must be .*{message}"):
        read_token(None, {"MLOPS_SERVING_TOKEN": token})


def test_a_missing_token_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot read the auth token file .*/nope"):
        read_token(tmp_path / "nope", {})


def test_only_loopback_may_listen_without_a_token() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")
    check_exposure("127.0.0.1", None, allow_unauthenticated=False)
    check_exposure("0.0.0.0", TOKEN, allow_unauthenticated=False)
    check_exposure("0.0.0.0", None, allow_unauthenticated=True)
    with pytest.raises(ValueError, match="refusing to listen on 0.0.0.0 without authentication"):
        check_exposure("0.0.0.0", None, allow_unauthenticated=False)


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def call(token: str | None, path: str, headers: dict[bytes, bytes]) -> tuple[int, dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "path": path, "headers": list(headers.items())}
    asyncio.run(AuthMiddleware(_ok, token)(scope, receive, send))
    body = sent[1]["body"]
    return sent[0]["status"], (json.loads(body) if body != b"ok" else {})


def test_the_middleware_asks_for_the_token_except_on_health_probes() -> None:
    assert call(TOKEN, "/v2/health/ready", {})[0] == 200
    status, body = call(TOKEN, "/metrics", {})
    assert status == 401 and "missing 'Authorization: Bearer <token>'" in body["error"]
    assert call(TOKEN, "/metrics", {b"authorization": b"Bearer " + b"x" * 20})[0] == 401
    assert call(TOKEN, "/metrics", {b"authorization": f"Bearer {TOKEN}".encode()})[0] == 200
    assert call(None, "/metrics", {})[0] == 200


def test_a_cross_site_browser_request_is_refused_with_or_without_a_token() -> None:
    for token in (None, TOKEN):
        status, body = call(token, "/v2/models/m/infer", {b"sec-fetch-site": b"cross-site"})
        assert status == 403 and "cross-site" in body["error"]
    assert call(None, "/v2/models/m/infer", {b"sec-fetch-site": b"same-origin"})[0] == 200


@pytest.mark.parametrize(
    "header",
    [f"Bearer {TOKEN}junk", f"Bearer {TOKEN} ", f"Bearer {TOKEN[:-1]}", f"Bearer  {TOKEN}",
     f"Bearer {TOKEN},{TOKEN}", f"Token {TOKEN}", TOKEN],
)
def test_only_the_exact_bearer_token_is_accepted(header: str) -> None:
    """The whole header is compared: the token followed by more, or a prefix of it, is not it."""
    status, body = call(TOKEN, "/v2/models/m/infer", {b"authorization": header.encode()})
    assert status == 401
    expected = "the bearer token is wrong" if header.startswith("Bearer ") else "must be 'Bearer"
    assert expected in body["error"]
