"""One line for an endpoint that cannot be reached, whichever client library failed to reach it.

The command line talks to KFP (kfp's urllib3), the model server (httpx), MLflow (requests),
the Kubernetes API (urllib3) and S3 (minio's urllib3). Each reports an unreachable host as its
own exception, usually wrapped once or twice; ``unreachable_message`` finds the connection
failure in the chain and names the endpoint, what it is and what to do.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from types import TracebackType
from urllib.parse import urlsplit

# What a library's endpoint is, and what to check, by the package whose code raised.
_SERVICES = {
    "mlflow": (
        "the MLflow tracking server",
        "check MLFLOW_TRACKING_URI (mlops release: the environment's tracking_uri) and that the "
        "server runs",
    ),
    "kfp": (
        "the KFP API",
        "check --host (KFP_HOST) and the port-forward: "
        "kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8888:80",
    ),
    "kubernetes": ("the Kubernetes API", "check the kubeconfig's cluster: kubectl cluster-info"),
    "minio": (
        "the S3 endpoint",
        "check MLOPS_S3_ENDPOINT (mlops release: the environment's s3_endpoint) and that it runs",
    ),
}
_SERVICES["kfp_server_api"] = _SERVICES["kfp"]
_SERVICES["kserve"] = _SERVICES["kubernetes"]
# When no library says (a plain httpx call), the command does.
_COMMAND_SERVICES = {
    "submit": _SERVICES["kfp"],
    "predict": ("the model server", "start it with `mlops serve`, or pass --url"),
    "drift": ("the model server", "start it with `mlops serve`, or pass --url"),
    "rollout": ("the model server", "start it with `mlops serve`, or pass --url"),
    "release": (
        "an endpoint of the environments file",
        "check its s3_endpoint and tracking_uri and that the port-forwards are open",
    ),
}
_GENERIC = ("the server", "check the address and that the server runs")
# The top-level packages of this project: an error they raise already says what went wrong.
PROJECT_PACKAGES = frozenset({"mlops", "serving", "pipelines", "components"})


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and the exceptions it was raised from or while handling, outermost first."""
    seen: set[int] = set()
    pending: list[BaseException] = [err]
    while pending and len(seen) < 20:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
        reason = getattr(current, "reason", None)  # urllib3's MaxRetryError keeps its cause here
        if isinstance(reason, BaseException):
            pending.append(reason)


def _connection_errors() -> tuple[type[BaseException], ...]:
    """The connection-failure types of the client libraries this process has imported.

    A library that was never imported cannot have raised: looked up in ``sys.modules`` only.
    """
    # Not the builtin TimeoutError: kfp raises it for a run that outlasts --timeout.
    found: list[type[BaseException]] = [ConnectionError]
    for module, names in (
        ("httpx", ("TransportError",)),
        ("urllib3.exceptions", ("MaxRetryError", "NewConnectionError", "ProtocolError")),
        ("requests.exceptions", ("ConnectionError", "Timeout")),
    ):
        loaded = sys.modules.get(module)
        found += [getattr(loaded, name) for name in names if loaded and hasattr(loaded, name)]
    socket = sys.modules.get("socket")
    if socket is not None:
        found.append(socket.gaierror)
    return tuple(found)


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def _endpoint(err: BaseException) -> str | None:
    """The ``scheme://host:port`` an exception of httpx, urllib3 or requests was about."""
    pool = getattr(err, "pool", None)  # urllib3 MaxRetryError
    if pool is not None and getattr(pool, "host", None):
        return f"{getattr(pool, 'scheme', 'http')}://{pool.host}:{pool.port}"
    conn = getattr(err, "conn", None)  # urllib3 NewConnectionError
    if conn is not None and getattr(conn, "host", None):
        return f"{conn.host}:{conn.port}"
    try:
        request = getattr(err, "request", None)  # httpx and requests; httpx raises when unset
    except RuntimeError:
        request = None
    url = getattr(request, "url", None)
    return _origin(str(url)) if url is not None else None


def _reason(errors: list[BaseException]) -> str:
    """The operating system's words (``Connection refused``), else the innermost type's name."""
    for err in reversed(errors):
        if isinstance(err, OSError) and err.strerror:
            return str(err.strerror)
    return type(errors[-1]).__name__


def _packages(tb: TracebackType | None) -> Iterator[str]:
    while tb is not None:
        yield str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0]
        tb = tb.tb_next


def raised_by_project(err: BaseException) -> bool:
    """Whether this project's own code raised ``err`` (its message already says what to do)."""
    packages = list(_packages(err.__traceback__))
    return bool(packages) and packages[-1] in PROJECT_PACKAGES


def unreachable_message(err: BaseException, command: str | None) -> str | None:
    """One line naming the endpoint ``err`` could not reach, or ``None`` if it is not that.

    Args:
        err: What a command raised.
        command: The subcommand's name (what the endpoint is when no library says).
    """
    kinds = _connection_errors()
    chain = list(_chain(err))
    failures = [e for e in chain if isinstance(e, kinds)]
    if not failures:
        return None
    endpoint = next((e for e in map(_endpoint, chain) if e), None)
    service, advice = _COMMAND_SERVICES.get(command or "", _GENERIC)
    for link in chain:
        known = next((p for p in _packages(link.__traceback__) if p in _SERVICES), None)
        if known:
            service, advice = _SERVICES[known]
            break
    where = f" at {endpoint}" if endpoint else ""
    return f"cannot reach {service}{where} ({_reason(failures)}): {advice}"


def refused_message(err: BaseException) -> str | None:
    """One line for an error answer of the KFP or Kubernetes API (their clients' ApiException).

    Both clients are generated from OpenAPI and raise ``ApiException`` with ``status``,
    ``reason`` and the body; its own text spans several lines with every response header.
    """
    package = type(err).__module__.split(".")[0]
    if type(err).__name__ != "ApiException" or package not in _SERVICES:
        return None
    service = _SERVICES[package][0]
    body = getattr(err, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    detail = str(body or "")
    try:
        parsed = json.loads(detail)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        detail = str(parsed.get("message") or parsed.get("error") or detail)
    detail = " ".join(detail.split())[:300]
    answered = f"{service} answered {getattr(err, 'status', '?')} {getattr(err, 'reason', '')}"
    return f"{answered.rstrip()}: {detail}" if detail else answered.rstrip()
