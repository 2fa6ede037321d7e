"""Several worker processes serving one listening socket: ``mlops serve --workers N``.

Why fork, and not KServe's or uvicorn's multiprocess servers: both start their workers with
``spawn``, so each worker imports the app again from an import string
(``kserve.model_server:app``) and receives its server by pickling. The app this project serves
is KServe's app with routes, middleware and a loaded ``CanaryRouter`` added at start (threads,
locks, a dynamically made protocol class): none of it survives a spawn, and each worker would
import KServe and load every revision again (seconds each on two cores). Forking after
everything is loaded and before any thread or event loop exists gives each worker the same
app, routes and models, shared copy-on-write; each worker then starts its own state watcher
and event loop on the inherited socket, and the kernel spreads the connections.

Metrics add up through ``prometheus_client``'s multiprocess mode: it must be switched on
before ``prometheus_client`` is first imported (``use_private_metrics_dir``), which is why this
module imports it only inside functions.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

logger = logging.getLogger("mlops.serving")

# Beyond a few per core, workers only add memory and contention.
MAX_WORKERS = 64
# A worker that exits with an error this soon after its start will do so again: stop instead
# of restarting it in a loop.
_STARTUP_S = 10.0
_METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def default_workers() -> int:
    """One worker per core (``os.cpu_count()``), at most ``MAX_WORKERS``."""
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def use_private_metrics_dir() -> Path:
    """Switch ``prometheus_client`` to multiprocess mode on a fresh, empty directory of our own.

    Must run before ``prometheus_client`` is imported: it picks its value class at import.
    A directory the environment already names is not reused, since files another server left
    there would be added to this one's figures.

    Returns:
        The directory; remove it when the server stops.

    Raises:
        RuntimeError: When ``prometheus_client`` is already imported.
    """
    import sys

    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess mode was set")
    path = Path(tempfile.mkdtemp(prefix="mlops-metrics-"))
    os.environ[_METRICS_ENV] = str(path)
    return path


def multiprocess_metrics() -> bool:
    """Whether this process counts its metrics in ``PROMETHEUS_MULTIPROC_DIR`` files."""
    from prometheus_client import values

    return os.environ.get(_METRICS_ENV) is not None and values.ValueClass is not values.MutexValue


def listening_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """Bind and listen on ``host:port``; every worker accepts from this one socket.

    Raises:
        OSError: When the port is taken, in one line.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(
            f"cannot listen on {host}:{port} ({err.strerror}): another server may be running "
            "there; stop it or pass --port"
        ) from err
    sock.listen(backlog)
    return sock


def serve_forked(count: int, run_worker: Callable[[int], None], listener: socket.socket) -> int:
    """Fork ``count`` workers running ``run_worker`` and supervise them until they all stop.

    SIGTERM or SIGINT to this process is passed on to every worker as SIGTERM (each drains
    its connections and exits). A worker that dies otherwise is replaced (its live metric
    files marked dead), unless it failed with an error within seconds of its start.

    Args:
        count: Number of workers.
        run_worker: Serves until SIGTERM; runs in each forked child, which then exits, with
            the worker's slot (0 to ``count - 1``; a replacement takes the dead one's).
        listener: The socket the workers accept from. Shut down here on the stop signal, so
            new connections are refused at once rather than queued for workers that no longer
            accept them (and reset when the last one exits).

    Returns:
        0 when stopped by a signal, 1 when a worker failed at start.
    """
    from prometheus_client import multiprocess

    started: dict[int, tuple[float, int]] = {}
    stopping = False
    failed = False

    def fork_worker(slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the caller's code
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                run_worker(slot)
                code = 0
            except BaseException:
                logger.exception("worker %d failed", os.getpid())
            finally:
                os._exit(code)
        started[pid] = (time.monotonic(), slot)

    def stop_all(signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        nonlocal stopping
        stopping = True
        # The socket is shared: closing this process's descriptor alone would leave it
        # listening until the last worker closes its own. Shutting it down stops it for all.
        try:
            listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already shut down
        listener.close()
        for pid in started:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    # libuv (uvloop) accepts every pending connection at each wake-up: the first worker to
    # wake took 6 of wrk's 8 connections, and keep-alive kept them there. With single accept
    # it yields after each, and the workers share the connections about evenly.
    os.environ.setdefault("UV_TCP_SINGLE_ACCEPT", "1")
    for slot in range(count):
        fork_worker(slot)
    previous = {sig: signal.signal(sig, stop_all) for sig in (signal.SIGTERM, signal.SIGINT)}
    logger.info(
        "serving from %d worker processes %s; their metrics in %s",
        count,
        sorted(started),
        os.environ.get(_METRICS_ENV),
    )
    try:
        while started:
            pid, status = os.wait()
            worker = started.pop(pid, None)
            if worker is None:
                continue
            began, slot = worker
            multiprocess.mark_process_dead(pid)
            code = os.waitstatus_to_exitcode(status)
            if stopping:
                continue
            if code > 0 and time.monotonic() - began < _STARTUP_S:
                logger.error("worker %d exited with %d at start; stopping the server", pid, code)
                failed = True
                stop_all()
                continue
            logger.warning("worker %d exited (%d); starting another", pid, code)
            fork_worker(slot)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if failed else 0
