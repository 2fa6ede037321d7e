"""Optional bearer-token authentication for the local server, and the checks around exposing it.

With a token, every request except the health probes must carry ``Authorization: Bearer
<token>``; the comparison takes constant time (``hmac.compare_digest``). ``/metrics`` needs the
token too (Prometheus sends it with ``authorization: {credentials_file: ...}``). Whatever the
token, a request a browser marks as cross-site (``Sec-Fetch-Site: cross-site``) is refused: no
web page has a reason to drive this server, and a page could otherwise send it requests that
need no CORS preflight (a ``text/plain`` POST).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import MutableMapping
from pathlib import Path

from serving.observability import ASGIApp, Message, Receive, Scope, Send, error_response

TOKEN_ENV = "MLOPS_SERVING_TOKEN"
TOKEN_FILE_OPTION = "--auth-token-file"
MIN_TOKEN_CHARS = 16
# Probes need no token: a kubelet or a load balancer checks them without credentials.
OPEN_PATHS = frozenset({"/", "/v2/health/live", "/v2/health/ready"})


def read_token(
    token_file: Path | None, environ: MutableMapping[str, str] | None = None
) -> str | None:
    """The token from ``token_file`` if given, else from ``MLOPS_SERVING_TOKEN``, else None.

    Raises:
        ValueError: When the file cannot be read, or the token is too short or not printable
            ASCII (it travels in an HTTP header).
    """
    environ = os.environ if environ is None else environ
    if token_file is not None:
        try:
            token, source = token_file.read_text().strip(), f"{TOKEN_FILE_OPTION} {token_file}"
        except OSError as err:
            raise ValueError(
                f"cannot read the auth token file {token_file} ({err.strerror or err})"
            ) from err
    elif environ.get(TOKEN_ENV):
        token, source = environ[TOKEN_ENV].strip(), TOKEN_ENV
    else:
        return None
    if len(token) < MIN_TOKEN_CHARS or not all("!" <= c <= "~" for c in token):
        raise ValueError(
            f"the auth token from {source} must be at least {MIN_TOKEN_CHARS} printable ASCII "
            "characters without spaces; make one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return token


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` exposes the server to this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve to anything
        return False


def check_exposure(host: str, token: str | None, allow_unauthenticated: bool) -> None:
    """Refuse to listen beyond loopback without a token, unless the user said so.

    Raises:
        ValueError: When ``host`` is not loopback, there is no token, and
            ``allow_unauthenticated`` is false.
    """
    if token is None and not allow_unauthenticated and not is_loopback(host):
        raise ValueError(
            f"refusing to listen on {host} without authentication: anyone who can reach it "
            f"could use the model; set {TOKEN_ENV} or pass {TOKEN_FILE_OPTION} PATH "
            "(or --allow-unauthenticated to serve it open)"
        )


def _refuse(status: int, message: str, challenge: bytes | None) -> tuple[Message, Message]:
    if challenge is None:
        return error_response(status, message)
    return error_response(status, message, (b"www-authenticate", challenge))


class AuthMiddleware:
    """Refuses cross-site browser requests, and, with a token, requests without it (401)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        """Wrap ``app``.

        Args:
            app: The ASGI application.
            token: The bearer token every request but the health probes must carry; None to
                serve without authentication.
        """
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        for message in refusal:
            await send(message)

    def _refusal(self, scope: Scope) -> tuple[Message, Message] | None:
        headers = dict(scope.get("headers") or [])
        if headers.get(b"sec-fetch-site") == b"cross-site":
            return _refuse(403, "cross-site requests from a web page are refused", None)
        if self.expected is None or scope["path"] in OPEN_PATHS:
            return None
        given = headers.get(b"authorization")
        if given is None:
            return _refuse(
                401,
                "missing 'Authorization: Bearer <token>' header: this server needs the token "
                f"it was started with (mlops predict/drift read {TOKEN_ENV} or "
                f"{TOKEN_FILE_OPTION})",
                b'Bearer realm="mlops"',
            )
        if not hmac.compare_digest(given, self.expected):
            if not given.lower().startswith(b"bearer "):
                message = "the Authorization header must be 'Bearer <token>'"
                return _refuse(401, message, b'Bearer realm="mlops", error="invalid_request"')
            return _refuse(
                401, "the bearer token is wrong", b'Bearer realm="mlops", error="invalid_token"'
            )
        return None
