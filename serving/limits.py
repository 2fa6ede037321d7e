"""Connection limits uvicorn lacks: header size, header/body read deadlines, a connection cap.

uvicorn's httptools protocol (what it picks when httptools is installed) buffers headers of any
size, waits for ever for a request's headers or body, and accepts connections until the
process runs out of file descriptors; its ``limit_concurrency`` answers 503 once enough
connections are open, so slow clients holding connections would turn every real request
away. ``bounded_protocol`` returns uvicorn's protocol with these bounds added:

* request headers (request line included) over ``max_header_bytes`` get 431;
* a request whose headers (or body) are not in within ``header_timeout_s`` (``body_timeout_s``)
  gets 408 and the connection is closed;
* over ``max_connections`` a new connection evicts the one that has waited longest for its
  client (reading a request, or idle between requests); only when every connection is busy
  with a request is the new one refused (503). A slow client cannot hold a slot against a
  client that sends its request at once;
* on shutdown, a keep-alive connection with a request on its way gets the answer (with
  ``Connection: close``) instead of a reset; uvicorn closes idle connections at once;
* with several worker processes (``ConnectionShares``), a worker holding more than its share
  of the open connections answers its next request with ``Connection: close``: the client
  connects again and the connection lands where the kernel hands it, usually an idle worker.
  Without this, keep-alive connections stay wherever they were first accepted (6 of 8 on one
  of two workers).
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import resource
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger("mlops.serving")

REJECTED = Counter(
    "mlops_connections_rejected",
    "Connections closed by the server's limits",
    ["reason"],
)
# How long a keep-alive connection idle at shutdown may still deliver a request already sent.
_DRAIN_IDLE_S = 1.0
# How often the deadlines are checked: a slow request is cut off up to this much late.
_SWEEP_S = 0.25
# File descriptors kept for everything that is not a client connection (models, logs, state).
_RESERVED_FDS = 64


@dataclass(frozen=True)
class ConnectionLimits:
    """Bounds on what one client connection may cost the server.

    Attributes:
        max_header_bytes: Request line plus headers; larger requests get 431.
        header_timeout_s: Time from the first byte of a request (or the connection) to the end
            of its headers; slower requests get 408.
        body_timeout_s: Time from the end of the headers to the end of the body; 408 after.
        max_connections: Open client connections; see the module docstring for what happens
            above it.
    """

    max_header_bytes: int = 16 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 1000

    def __post_init__(self) -> None:
        if not 1024 <= self.max_header_bytes <= 1024 * 1024:
            raise ValueError(
                "the header size limit (--max-header-bytes) must be within 1024..1048576, "
                f"got {self.max_header_bytes}"
            )
        for option, value in (
            ("--header-timeout", self.header_timeout_s),
            ("--body-timeout", self.body_timeout_s),
        ):
            if not 0 < value <= 3600:
                raise ValueError(f"{option} must be within (0, 3600] seconds, got {value}")
        if not 1 <= self.max_connections <= 100_000:
            raise ValueError(
                f"--max-connections must be within 1..100000, got {self.max_connections}"
            )


def fit_to_open_file_limit(limits: ConnectionLimits) -> ConnectionLimits:
    """Raise the soft open-file limit to hold ``max_connections``, or lower the cap to fit.

    Running out of file descriptors stops ``accept`` for everyone, real clients included;
    the cap must stay below the limit. The soft limit may be raised up to the hard one
    without privileges.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limits.max_connections + _RESERVED_FDS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new_soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
        soft = new_soft
    if soft != resource.RLIM_INFINITY and soft < wanted:
        fitted = max(1, soft - _RESERVED_FDS)
        logger.warning(
            "max connections lowered from %d to %d: the open-file limit is %d (ulimit -n)",
            limits.max_connections,
            fitted,
            soft,
        )
        return ConnectionLimits(
            limits.max_header_bytes, limits.header_timeout_s, limits.body_timeout_s, fitted
        )
    return limits


class ConnectionShares:
    """Open connections per worker process, in memory shared by the workers of one server.

    Each worker writes only its own slot (``slot``, set in the worker after the fork) and
    reads the others', so no lock is needed; a figure a moment stale only delays a rebalance.
    """

    def __init__(self, workers: int) -> None:
        """Make one zeroed slot per worker (before the workers are forked)."""
        self.counts = multiprocessing.RawArray("q", workers)
        self.slot = 0

    def reset(self, slot: int) -> None:
        """Make this process the worker of ``slot``, whose earlier holder (if any) is gone."""
        self.slot = slot
        self.counts[slot] = 0

    def change(self, delta: int) -> None:
        """Count a connection opened (+1) or closed (-1) by this worker."""
        self.counts[self.slot] += delta

    def over_share(self) -> bool:
        """Whether this worker holds more than an even share of all open connections."""
        counts = list(self.counts)
        return counts[self.slot] > -(-sum(counts) // len(counts))


class _HeadersTooLarge(Exception):
    """Raised inside a parser callback to stop parsing."""


def _response(status: bytes, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    )


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with ``limits`` (set by ``bounded_protocol``)."""

    limits: ConnectionLimits = ConnectionLimits()
    # Open connections of every worker, when there are several.
    shares: ConnectionShares | None = None
    # Connections waiting for their client, oldest first (a dict keeps insertion order).
    waiting: dict[BoundedHttpToolsProtocol, None] = {}
    # One timer per server checks the deadlines, rather than a timer per request and phase.
    sweeper: asyncio.TimerHandle | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Create the protocol for one connection (uvicorn's arguments)."""
        super().__init__(*args, **kwargs)
        self._deadline: float | None = None
        self._deadline_reason = ""
        self._header_bytes = 0
        self._in_headers = True
        self._request_begun = False
        self._draining = False
        self._counted = False

    # Connection cap and the waiting order.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Accept, evicting the longest-waiting connection when over the cap."""
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            oldest = next(iter(self.waiting), None)
            if oldest is None:
                REJECTED.labels("connection_limit").inc()
                transport.write(_response(b"503 Service Unavailable", "too many connections"))
                transport.close()
                return
            REJECTED.labels("evicted").inc()
            oldest._close()
        if self.shares is not None:
            self.shares.change(1)
            self._counted = True
        self._wait_for_client()
        self._arm(self.limits.header_timeout_s, "header_timeout")
        if type(self).sweeper is None:
            type(self)._sweep(self.loop, self.connections)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection."""
        self._cancel()
        self.waiting.pop(self, None)
        if self._counted and self.shares is not None:
            self.shares.change(-1)
            self._counted = False
        super().connection_lost(exc)

    def _wait_for_client(self) -> None:
        self.waiting.pop(self, None)
        self.waiting[self] = None

    def _close(self) -> None:
        self._cancel()
        self.waiting.pop(self, None)
        self.transport.close()

    # Deadlines.
    def _arm(self, seconds: float, reason: str) -> None:
        self._deadline = self.loop.time() + seconds
        self._deadline_reason = reason

    def _cancel(self) -> None:
        self._deadline = None

    @classmethod
    def _sweep(cls, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        """Time out the waiting connections past their deadline; runs while any is open."""
        now = loop.time()
        late = [c for c in cls.waiting if c._deadline is not None and c._deadline <= now]
        for connection in late:
            connection._timed_out(connection._deadline_reason)
        if connections:
            cls.sweeper = loop.call_later(_SWEEP_S, cls._sweep, loop, connections)
        else:
            cls.sweeper = None

    def _timed_out(self, reason: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        REJECTED.labels(reason).inc()
        phase = "headers" if reason == "header_timeout" else "body"
        seconds = self.limits.header_timeout_s if phase == "headers" else self.limits.body_timeout_s
        started = self.cycle is not None and self.cycle.response_started and not self._in_headers
        if self._request_begun and not started:
            message = f"request {phase} not received within {seconds:g} s"
            self.transport.write(_response(b"408 Request Timeout", message))
        if self.cycle is not None and not self._in_headers:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self._close()

    # Parser callbacks.
    def data_received(self, data: bytes) -> None:
        """Feed the parser; headers still incomplete past the limit get 431."""
        in_headers_before = self._in_headers
        super().data_received(data)
        if in_headers_before and self._in_headers and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                self._too_large()

    def on_message_begin(self) -> None:
        """A request starts: its headers have ``header_timeout_s`` from now (or the connection)."""
        super().on_message_begin()
        if self._deadline is None:
            self._arm(self.limits.header_timeout_s, "header_timeout")
        self._request_begun = True
        self._in_headers = True
        self._header_bytes = 0
        self._wait_for_client()

    def on_headers_complete(self) -> None:
        """Check the headers' size, then give the body ``body_timeout_s``."""
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:
            self._header_bytes = size
            raise _HeadersTooLarge  # the parser stops; uvicorn calls send_400_response
        self._in_headers = False
        self._arm(self.limits.body_timeout_s, "body_timeout")
        super().on_headers_complete()
        if self._draining or (self.shares is not None and self.shares.over_share()):
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        """The request is in: no deadline while the server works on it."""
        self._cancel()
        self.waiting.pop(self, None)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        """Idle between requests: uvicorn's keep-alive timeout applies."""
        self._request_begun = False
        self._in_headers = True
        self._header_bytes = 0
        super().on_response_complete()
        if not self.transport.is_closing():
            self._wait_for_client()

    def send_400_response(self, msg: str) -> None:
        """Answer 400 for a request uvicorn cannot parse, 431 when its headers are too large."""
        if self._header_bytes > self.limits.max_header_bytes:
            self._too_large()
            return
        super().send_400_response(msg)

    def _too_large(self) -> None:
        REJECTED.labels("header_too_large").inc()
        message = f"request headers are over {self.limits.max_header_bytes} bytes"
        self.transport.write(_response(b"431 Request Header Fields Too Large", message))
        self._close()

    # Shutdown.
    def shutdown(self) -> None:
        """Finish the request in flight, or one already on its way, then close."""
        self._draining = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        elif self._request_begun:
            pass  # its headers are arriving: answered with Connection: close
        else:
            # Idle: a request sent just before the signal may still be in the socket.
            self.loop.call_later(_DRAIN_IDLE_S, self._close_if_idle)

    def _close_if_idle(self) -> None:
        if not self._request_begun and not self.transport.is_closing():
            self._close()


def bounded_protocol(
    limits: ConnectionLimits, shares: ConnectionShares | None = None
) -> type[BoundedHttpToolsProtocol]:
    """Return uvicorn's httptools protocol bounded by ``limits`` (for ``Config(http=...)``).

    Args:
        limits: The bounds.
        shares: The workers' connection counts, to spread keep-alive connections among them.
    """
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {"limits": limits, "shares": shares, "waiting": {}, "sweeper": None},
    )
