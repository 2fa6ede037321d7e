"""``mlops rollout`` and ``mlops deploy``: put a stored version out as a canary, roll it out."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import click

from mlops.cli.deployments import NAMESPACE_OPTION, TARGET_OPTION
from mlops.cli.options import model_name_option
from mlops.settings import default_store_uri, default_tracking_uri, state_dir
from serving.canary_analysis import Thresholds

_DEFAULTS = Thresholds()


# (option, Thresholds field, type, help): one option per threshold, its default the field's.
_THRESHOLD_OPTIONS = (
    ("--min-requests", "min_requests", click.IntRange(1),
     "Canary requests a window needs to be judged; fewer: hold."),
    ("--max-holds", "max_holds", click.IntRange(0),
     "Holds in a row at one step before rolling back for lack of traffic."),
    ("--max-error-rate-increase", "max_error_rate_increase", click.FloatRange(0, 1),
     "Canary 5xx rate minus stable 5xx rate."),
    ("--max-p99-ratio", "max_p99_ratio", click.FloatRange(1),
     "Canary p99 latency over stable p99 (and at least --min-p99-increase slower)."),
    ("--min-p99-increase", "min_p99_increase_s", click.FloatRange(0),
     "Seconds a slower p99 must also add before it fails."),
    ("--max-class-divergence", "max_class_divergence", click.FloatRange(0, 1),
     "Jensen-Shannon divergence of predicted classes, canary vs stable."),
    ("--max-probability-divergence", "max_probability_divergence", click.FloatRange(0, 1),
     "Jensen-Shannon divergence of the predicted class's probability histogram."),
    ("--max-input-psi", "max_input_psi", click.FloatRange(0),
     "Largest per-feature PSI of canary inputs vs its training data."),
    ("--min-drift-rows", "min_drift_rows", click.IntRange(1),
     "Canary rows a window needs before input drift is judged."),
    ("--min-shadow-agreement", "min_shadow_agreement", click.FloatRange(0, 1),
     "Share of mirrored requests the canary must answer as the stable did."),
    ("--min-class-share-ratio", "min_class_share_ratio", click.FloatRange(0, 1),
     "Share of its stable share each predicted class must keep in the canary."),
)  # fmt: skip


def _threshold_options(func: Any) -> Any:
    """One option per threshold, defaults from ``Thresholds`` (the README gives the reasons)."""
    for flag, field, kind, help_text in reversed(_THRESHOLD_OPTIONS):
        func = click.option(
            flag,
            field,
            type=kind,
            default=getattr(_DEFAULTS, field),
            show_default=True,
            help=help_text,
        )(func)
    return func


def rollout_options(func: Any) -> Any:
    """Steps, interval and thresholds (``mlops rollout``; ``mlops run --rollout auto``)."""
    func = _threshold_options(func)
    func = click.option(
        "--interval",
        type=click.FloatRange(0, min_open=True),
        default=30.0,
        show_default=True,
        help="Seconds of traffic judged per step.",
    )(func)
    return click.option(
        "--steps",
        default="10,25,50,100",
        show_default=True,
        help="Canary shares in percent, increasing; the rollout promotes after the last.",
    )(func)


def default_options() -> dict[str, Any]:
    """The options of ``mlops rollout`` at their defaults (``mlops run --rollout auto``)."""
    from dataclasses import asdict

    thresholds = asdict(_DEFAULTS)
    thresholds.pop("min_shadow_requests")
    thresholds.pop("smoothing")
    return {"steps": "10,25,50,100", "interval": 30.0, **thresholds}


def check_server(name: str) -> None:
    """Refuse (before anything runs) when a model is deployed but no server answers for it.

    Raises:
        click.ClickException: Naming the URL and how to start the server.
    """
    import httpx

    from mlops.cli.serving import _server_url
    from serving import local_controller

    try:
        local_controller.read_state(name, state_dir())
    except local_controller.NotDeployedError:
        return  # a first deploy takes all traffic: nothing to roll out
    url = _server_url(None, name)
    try:
        httpx.get(f"{url}/v2/health/live", timeout=5).raise_for_status()
    except httpx.HTTPError as err:
        raise click.ClickException(
            f"--rollout auto judges the canary on live traffic, but no server answers at {url} "
            f"({type(err).__name__}): start `mlops serve` (and traffic) first, or use "
            "--rollout manual"
        ) from err


def _warm_registry(tracking_uri: str, name: str) -> None:
    from mlops import registry

    try:
        registry.version_of_alias(tracking_uri, name, registry.CHAMPION)
    except Exception:  # only a warm-up: the real call reports any problem
        pass


def _terminated(signum: int, _frame: Any) -> None:
    """SIGTERM (a CI job cancelled, ``kill``) rolls back as Ctrl-C does."""
    raise KeyboardInterrupt(f"signal {signum}")


def check_registry(tracking_uri: str, name: str, serving: str) -> None:
    """Refuse (one line) when a model serves but its registry is missing or empty.

    ``promote``, ``rollback`` and ``rollout`` move the aliases: on a missing SQLite database
    MLflow would silently create an empty one, and the champion would name nothing.

    Raises:
        click.ClickException: Naming the registry and the fix; nothing was changed.
    """
    from mlops import registry

    problem = registry.registry_problem(tracking_uri, name)
    if problem:
        raise click.ClickException(
            f"{problem}, but {name!r} serves {serving}: restore it (or point "
            "MLFLOW_TRACKING_URI at the registry that holds its versions); nothing changed"
        )


def execute_rollout(
    name: str,
    url: str | None,
    token_file: Path | None,
    target_name: str = "local",
    namespace: str = "kubeflow-user",
    **options: Any,
) -> None:
    """Run the rollout of ``name``, local or in the cluster.

    Exits 0 promoted, 3 rolled back, 4 stopped by someone else's traffic change, 1 on an
    error (another rollout holding the lock included).
    """
    import signal

    from mlops.cli.serving import _server_url, _token
    from serving.client import V2Client
    from serving.inference_service import RolloutLockedError
    from serving.local_target import LocalTarget
    from serving.rollout import (
        STOPPED,
        RolloutPlan,
        StepRecord,
        parse_steps,
        run_rollout,
        tag_version,
    )
    from serving.rollout_report import write_report

    steps = parse_steps(options.pop("steps"))
    interval = float(options.pop("interval"))
    try:
        plan = RolloutPlan(steps, interval, Thresholds(**options))
    except ValueError as err:
        raise click.ClickException(str(err)) from err
    tracking_uri = default_tracking_uri()
    client: V2Client | None = None
    target: Any
    if target_name == "kubernetes":
        from serving.kubernetes_signals import KubernetesTarget

        # Signals come from the namespace's payload sink, through the API server's proxy.
        target = KubernetesTarget(name, namespace, state_dir(), tracking_uri)
    else:
        client = V2Client(_server_url(url, name), name, timeout_s=10.0, token=_token(token_file))
        target = LocalTarget(name, state_dir(), client.metrics, tracking_uri)
    log_path = state_dir() / "logs" / f"rollout-{name}.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def emit(record: StepRecord) -> None:
        click.echo(record.line())
        with open(log_path, "a") as log:
            log.write(json.dumps(record.as_json(), separators=(",", ":")) + "\n")

    pair = target.pair()
    check_registry(tracking_uri, name, f"versions {pair.stable_version} and {pair.canary_version}")
    # MLflow takes seconds to import and open its store: do it while the first window runs, so
    # the promote or rollback (which moves the aliases) is not seconds late.
    threading.Thread(target=_warm_registry, args=(tracking_uri, name), daemon=True).start()
    click.echo(
        f"rollout of {name}: canary version {pair.canary_version} ({pair.canary}) against "
        f"stable version {pair.stable_version} ({pair.stable}); steps {list(steps)}, "
        f"{interval:g} s each, judged on >= {plan.thresholds.min_requests} canary requests"
    )
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        result = run_rollout(target, plan, emit)
    except RolloutLockedError as err:
        raise click.ClickException(str(err)) from err
    finally:
        signal.signal(signal.SIGTERM, previous)
        if client is not None:
            client.close()
    with open(log_path, "a") as log:
        log.write(json.dumps(result.as_json(), separators=(",", ":")) + "\n")
    if result.outcome != STOPPED:  # a human's promote or rollback keeps its own tags
        tag_version(tracking_uri, name, pair.canary_version, result)
    report = write_report(result, plan, state_dir() / "rollouts")
    colour = "green" if result.exit_code == 0 else "yellow"
    click.secho(f"{result.outcome}: {result.reason}", fg=colour, bold=True)
    click.echo(f"report: {report}\nlog: {log_path}")
    sys.exit(result.exit_code)


@click.command()
@model_name_option(positional=True)
@rollout_options
@TARGET_OPTION
@NAMESPACE_OPTION
@click.option("--url", default=None, help="Model server base URL [default: as `mlops predict`].")
@click.option(
    "--auth-token-file",
    type=click.Path(path_type=Path),
    default=None,
    help="File holding the server's bearer token [default: MLOPS_SERVING_TOKEN, else none].",
)
def rollout(
    model_name: str,
    target: str,
    namespace: str,
    url: str | None,
    auth_token_file: Path | None,
    **options: Any,
) -> None:
    """Step the canary of NAME up, judging each step; promote it (exit 0) or roll back (exit 3).

    Each step below 100 gives the canary its share, waits --interval seconds, and compares
    the canary with the stable revision on that window: 5xx rate, p99 latency, predicted
    classes (divergence and per-class share) and probabilities, input drift, and agreement on
    mirrored requests. Too few canary requests hold the step (at most --max-holds times). A
    last step of 100 is the promote; it needs every model signal judged once. A `mlops promote`
    or `mlops rollback` meanwhile stops the rollout (exit 4), leaving the traffic as set; a
    second rollout of NAME is refused (exit 1); Ctrl-C or SIGTERM roll back. One line per
    step; the JSON lines go to .mlops/logs/, the HTML report to .mlops/rollouts/.
    """
    execute_rollout(model_name, url, auth_token_file, target, namespace, **options)


@click.command()
@click.argument("version", type=click.IntRange(1))
@model_name_option()
@click.option(
    "--canary-percent",
    type=click.IntRange(0, 100),
    default=10,
    show_default=True,
    help="Share of the new revision when one already serves (the first deploy takes all).",
)
@click.option(
    "--allow-rolled-back",
    is_flag=True,
    help="Deploy even when the version that would take the stable side was rolled back.",
)
@TARGET_OPTION
@NAMESPACE_OPTION
@click.option(
    "--service-account",
    default="kserve-minio-sa",
    show_default=True,
    help="ServiceAccount with the S3 Secret (kubernetes target).",
)
def deploy(
    version: int,
    model_name: str,
    canary_percent: int,
    allow_rolled_back: bool,
    target: str,
    namespace: str,
    service_account: str,
) -> None:
    """Deploy store VERSION of the model, as a canary when a revision already serves.

    Says which version takes the stable (prev) side, and refuses one whose rollout outcome
    is rolled-back unless --allow-rolled-back.
    """
    from mlops.cli.deployments import format_table, isvc_row
    from mlops.store import open_store
    from serving.deploy import deploy_inference_service, stable_side, sync_aliases
    from serving.inference_service import PredictorSettings, payload_sink_url

    store = open_store(default_store_uri())
    available = store.versions(model_name)
    if version not in available:
        raise click.ClickException(
            f"model {model_name!r} has no version {version} in the store "
            f"({default_store_uri()}); versions: {available or 'none'}"
        )
    store.read_metadata(model_name, version)  # a version still being written is refused
    side = stable_side(model_name, target, state_dir=state_dir(), namespace=namespace)
    if side is not None:
        _check_stable_side(model_name, version, canary_percent, side, allow_rolled_back)
    settings = PredictorSettings(
        name=model_name,
        storage_uri=store.version_uri(model_name, version),
        model_version=version,
        canary_traffic_percent=canary_percent,
        namespace=namespace,
        service_account=service_account if target == "kubernetes" else None,
        payload_logger_url=payload_sink_url(namespace) if target == "kubernetes" else None,
    )
    applied = deploy_inference_service(settings, target, state_dir())
    sync_aliases(default_tracking_uri(), applied, target, state_dir())
    click.echo(format_table([isvc_row(applied)]))


def _check_stable_side(
    name: str, version: int, percent: int, side: tuple[str, str], allow_rolled_back: bool
) -> None:
    """Name the version the canary splits with; refuse a rolled-back one unless allowed."""
    from mlops import registry

    revision, stable = side
    tags = registry.version_tags(default_tracking_uri(), name, stable) if stable else {}
    if tags.get(registry.OUTCOME_TAG) == registry.ROLLED_BACK and not allow_rolled_back:
        why = tags.get("rollout.reason", "")
        raise click.ClickException(
            f"version {stable} ({revision}) would take the stable side of version {version}, "
            f"but it was rolled back ({why[:200] or 'rollout.outcome=rolled-back'}): promote "
            "a good version first, or pass --allow-rolled-back; nothing changed"
        )
    click.echo(
        f"version {version} takes {percent}% as the canary; version {stable or '?'} "
        f"({revision}) keeps the stable side"
    )


COMMANDS = [rollout, deploy]
