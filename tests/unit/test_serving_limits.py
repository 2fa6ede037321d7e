"""The connection bounds of ``serving.limits`` on a real uvicorn server, over loopback sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from serving.limits import ConnectionLimits, bounded_protocol


async def _echo_length(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app that reads the whole body and answers its length."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = str(size).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Server:
    def __init__(self, limits: ConnectionLimits) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(
            _echo_length, http=bounded_protocol(limits), log_level="critical", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])), daemon=True
        )

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def connect(self) -> socket.socket:
        client = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        time.sleep(0.1)  # accepted and counted before the next one connects
        return client


def _is_open(client: socket.socket) -> bool:
    """Whether the server still holds the connection (nothing to read, not closed)."""
    client.setblocking(False)
    try:
        return client.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        client.setblocking(True)


@pytest.fixture
def clients() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for client in opened:
        client.close()


def test_the_connection_cap_is_exactly_the_configured_number(
    clients: list[socket.socket],
) -> None:
    with _Server(ConnectionLimits(max_connections=3, header_timeout_s=30)) as server:
        clients.extend(server.connect() for _ in range(3))
        time.sleep(0.3)
        assert [_is_open(c) for c in clients] == [True, True, True]
        clients.append(server.connect())  # one over: the longest-waiting one goes
        time.sleep(0.3)
        assert [_is_open(c) for c in clients] == [False, True, True, True]


def _send_headers_and_part_of_the_body(client: socket.socket) -> None:
    client.sendall(
        b"POST / HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 10\r\n\r\n01234"
    )


def test_a_body_may_take_the_body_timeout_even_when_the_header_timeout_is_shorter(
    clients: list[socket.socket],
) -> None:
    with _Server(ConnectionLimits(header_timeout_s=1, body_timeout_s=5)) as server:
        client = server.connect()
        clients.append(client)
        _send_headers_and_part_of_the_body(client)
        time.sleep(2.0)  # past the header timeout, within the body's
        assert _is_open(client)
        client.sendall(b"56789")
        answer = b""
        while not answer.endswith(b"\r\n\r\n10"):
            chunk = client.recv(4096)
            assert chunk, f"closed after {answer!r}"
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"10"), answer


def test_a_body_slower_than_the_body_timeout_gets_408_before_the_header_timeout(
    clients: list[socket.socket],
) -> None:
    with _Server(ConnectionLimits(header_timeout_s=8, body_timeout_s=1)) as server:
        client = server.connect()
        clients.append(client)
        started = time.monotonic()
        _send_headers_and_part_of_the_body(client)
        answer = client.recv(4096)
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"request body not received within 1 s" in answer
    assert 0.9 <= elapsed < 4, elapsed
