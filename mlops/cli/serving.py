"""``mlops serve``, ``mlops predict`` and ``mlops drift``: the local model server, its clients."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import click

from mlops.cli.options import model_name_option
from mlops.settings import state_dir
from serving.canary_analysis import Thresholds

_DEFAULT_URL = "http://127.0.0.1:8080"
_URL = click.option(
    "--url",
    default=None,
    help="Model server base URL [default: MLOPS_SERVING_URL, else the URL `mlops serve` "
    f"recorded in the state, else {_DEFAULT_URL}].",
)
_NAME = model_name_option()
_TOKEN_FILE = click.option(
    "--auth-token-file",
    type=click.Path(path_type=Path),
    default=None,
    help="File holding the server's bearer token [default: MLOPS_SERVING_TOKEN, else none].",
)


def _token(token_file: Path | None) -> str | None:
    from serving.auth import read_token

    return read_token(token_file)


def _server_url(url: str | None, name: str) -> str:
    if url:
        return url
    if os.environ.get("MLOPS_SERVING_URL"):
        return os.environ["MLOPS_SERVING_URL"]
    from serving import local_controller

    try:
        state = local_controller.read_state(name, state_dir())
    except local_controller.NotDeployedError:
        return _DEFAULT_URL
    return str(state.get("server", {}).get("url", _DEFAULT_URL))


@click.command()
@_NAME
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8080, show_default=True, type=int, help="HTTP port.")
@click.option(
    "--poll-interval",
    default=0.5,
    show_default=True,
    type=float,
    help="Seconds between checks of the state file (deploys, promotes, rollbacks).",
)
@click.option(
    "--max-body-bytes",
    default=8 * 1024 * 1024,
    show_default=True,
    type=int,
    help="Larger request bodies get 413.",
)
@_TOKEN_FILE
@click.option(
    "--allow-unauthenticated",
    is_flag=True,
    help="Serve without a token on a --host other than loopback (refused otherwise).",
)
@click.option(
    "--max-header-bytes",
    default=16 * 1024,
    show_default=True,
    type=int,
    help="Larger request headers get 431.",
)
@click.option(
    "--header-timeout",
    default=10.0,
    show_default=True,
    type=float,
    help="Seconds a request may take to send its headers (408 after).",
)
@click.option(
    "--body-timeout",
    default=30.0,
    show_default=True,
    type=float,
    help="Seconds a request may take to send its body (408 after).",
)
@click.option(
    "--max-connections",
    default=1000,
    show_default=True,
    type=int,
    help="Open connections per worker process; above it the one waiting longest for its "
    "client is closed.",
)
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(1, 64),
    help="Processes serving the port; 1 serves from this process [default: the number of CPUs].",
)
def serve(
    model_name: str,
    host: str,
    port: int,
    poll_interval: float,
    max_body_bytes: int,
    auth_token_file: Path | None,
    allow_unauthenticated: bool,
    max_header_bytes: int,
    header_timeout: float,
    body_timeout: float,
    max_connections: int,
    workers: int | None,
) -> None:
    """Serve the local InferenceService --model-name (v1, v2, /metrics) until interrupted.

    Reads the state `mlops run` deployed and follows `mlops promote` / `mlops rollback`
    without a restart. One JSON line per request goes to stdout; server logs go to stderr.
    Stop it with Ctrl-C (or `kill <pid>` when started in the background).

    With a token (--auth-token-file or MLOPS_SERVING_TOKEN) every request but the health
    probes needs `Authorization: Bearer <token>`. A --host other than loopback needs a token
    or --allow-unauthenticated.

    With several --workers, each process serves requests from the same port; /metrics adds
    up all of them, and each follows promotes and rollbacks on its own.
    """
    from serving.workers import default_workers, use_private_metrics_dir

    name = model_name
    workers = default_workers() if workers is None else workers
    # Metrics that add up across workers: set before prometheus_client is imported.
    metrics_dir = use_private_metrics_dir() if workers > 1 else None
    try:
        # KServe's model_server parses sys.argv when first imported: keep mlops's options from it.
        argv, sys.argv = sys.argv, sys.argv[:1]
        try:
            from serving.server import ServerSettings, run_server
        finally:
            sys.argv = argv

        from serving.limits import ConnectionLimits

        limits = ConnectionLimits(max_header_bytes, header_timeout, body_timeout, max_connections)
        settings = ServerSettings(
            name=name,
            state_dir=state_dir(),
            host=host,
            port=port,
            poll_interval_s=poll_interval,
            max_body_bytes=max_body_bytes,
            auth_token=_token(auth_token_file),
            allow_unauthenticated=allow_unauthenticated,
            limits=limits,
            workers=workers,
        )
        processes = f", {workers} worker processes" if workers > 1 else ""
        click.echo(f"serving {name} at {settings.url}{processes} (Ctrl-C to stop)", err=True)
        run_server(settings)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@_NAME
@_URL
@click.option("--proba", is_flag=True, help="Print class probabilities instead of labels.")
@click.option(
    "--version", "version", default=None, help="Ask one revision: a store version, latest or prev."
)
@click.option(
    "--label-column", default="target", show_default=True, help="Column dropped from the rows."
)
@_TOKEN_FILE
def predict(
    file: Path,
    model_name: str,
    url: str | None,
    proba: bool,
    version: str | None,
    label_column: str,
    auth_token_file: Path | None,
) -> None:
    """Send the rows of FILE (CSV with a header, Parquet, or JSON) as one v2 request.

    Prints which version answered, then a tab-separated table: a header (with --proba, one
    column per class, named by the model's class names), then one line per row.
    """
    from serving.client import V2Client, class_names, prediction_lines, read_rows

    rows = read_rows(file, label_column)
    server = _server_url(url, model_name)
    with V2Client(server, model_name, token=_token(auth_token_file)) as client:
        answer = client.infer(rows, probabilities=proba, version=version)
    click.echo(
        f"model {answer.model_name} version {answer.model_version} answered "
        f"{len(answer.outputs)} rows (request {answer.request_id})"
    )
    first = answer.outputs[0] if answer.outputs else None
    count = len(first) if isinstance(first, list) else 0
    metadata = _version_metadata(model_name, answer.model_version)
    classes = class_names(metadata, count or len((metadata or {}).get("classes") or []))
    for line in prediction_lines(answer, classes):
        click.echo(line)


def _version_metadata(model_name: str, version: str) -> dict[str, Any] | None:
    """The ``metadata.json`` of the version that answered, from the store, if it is readable.

    Only for display (class names): a store this machine cannot read leaves the columns
    numbered rather than failing a prediction that succeeded.
    """
    from mlops.settings import default_store_uri
    from mlops.store import open_store

    if not version.isdigit():
        return None
    try:
        return dict(open_store(default_store_uri()).read_metadata(model_name, int(version)))
    except Exception:  # noqa: BLE001 - any reason means: no names to show
        return None


@click.command()
@_NAME
@_URL
@click.option("--top", default=10, show_default=True, type=int, help="Features shown per revision.")
@click.option(
    "--min-rows",
    default=Thresholds.min_drift_rows,
    show_default=True,
    type=click.IntRange(1),
    help="Rows a revision needs before its PSI gets a verdict (the rollout's --min-drift-rows).",
)
@_TOKEN_FILE
def drift(
    model_name: str, url: str | None, top: int, min_rows: int, auth_token_file: Path | None
) -> None:
    """Print the PSI of served inputs vs the training data, per revision and numeric feature.

    PSI below 0.1 is stable, 0.1 to 0.25 a moderate shift, above 0.25 a significant one. Below
    --min-rows rows a revision reads "not enough rows (N of M needed)" instead: the PSI of a
    few rows is noise. Read from the running server's /metrics (statistics since it started).
    """
    from serving.client import V2Client, format_drift, parse_drift

    server = _server_url(url, model_name)
    with V2Client(server, model_name, token=_token(auth_token_file)) as client:
        report = parse_drift(client.metrics(), model_name)
    if not report:
        raise click.ClickException(
            f"the server reports no drift statistics for model {model_name!r}"
        )
    click.echo(format_drift(report, top, min_rows))


COMMANDS = [serve, predict, drift]
