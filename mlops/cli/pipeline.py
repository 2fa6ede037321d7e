"""``mlops run``, ``mlops compile`` and ``mlops submit``: the training pipeline, here or on KFP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from mlops.cli.options import model_name_option
from mlops.estimators import DEFAULT_HYPERPARAMETERS, ESTIMATOR_DEFAULTS
from mlops.parameters import GATE_METRICS
from mlops.settings import state_dir
from pipelines.compile import COMPILED as COMPILED_PIPELINE
from pipelines.compile import COMPILED_SCORING

# `mlops run`'s exit code when the gate refuses the model (documented in --help and README):
# a CI job tells it from a deploy (0) and from an error (1); 3 and 4 are `--rollout auto`'s
# (`mlops rollout`'s rolled back and stopped), passed through.
GATED_EXIT_CODE = 5


def _hyperparameters(_ctx: click.Context, _param: click.Parameter, value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as err:
        raise click.BadParameter(f"not JSON ({err.msg}); e.g. '{{\"C\": 0.5}}'") from err
    if not isinstance(parsed, dict):
        raise click.BadParameter("must be a JSON object, e.g. '{\"C\": 0.5}'")
    return parsed


def pipeline_options(func: Any) -> Any:
    """The pipeline parameters a user sets from the command line (run and submit)."""
    options = [
        click.option(
            "--source",
            default="sklearn:breast_cancer",
            show_default=True,
            help="sklearn:<name>, a CSV/Parquet path, or s3://bucket/key.",
        ),
        click.option("--label-column", default="target", show_default=True),
        click.option(
            "--estimator",
            default="logistic_regression",
            show_default=True,
            type=click.Choice(list(ESTIMATOR_DEFAULTS)),
        ),
        click.option(
            "--hyperparameters",
            default="{}",
            show_default=True,
            callback=_hyperparameters,
            help="JSON object of the estimator's parameters; {}: its defaults ("
            + "; ".join(
                f"{name} {json.dumps(params)}" for name, params in DEFAULT_HYPERPARAMETERS.items()
            )
            + ").",
        ),
        click.option("--seed", default=42, show_default=True, type=int),
        click.option(
            "--test-size",
            default=0.2,
            show_default=True,
            type=click.FloatRange(0, 1, min_open=True, max_open=True),
        ),
        click.option(
            "--label-noise",
            default=0.0,
            show_default=True,
            type=click.FloatRange(0, 1),
            help="Share of training labels replaced at random (a degraded model).",
        ),
        click.option("--min-rows", default=100, show_default=True, type=click.IntRange(1)),
        click.option(
            "--gate-metric",
            default="accuracy",
            show_default=True,
            type=click.Choice(GATE_METRICS),
            help="Holdout metric the gate judges by; the model must also beat always predicting "
            "the majority class on it.",
        ),
        click.option(
            "--min-score",
            "--min-accuracy",
            "min_score",
            default=0.9,
            show_default=True,
            type=click.FloatRange(0, 1),
            help="Floor of the gate metric (--min-accuracy: its old name).",
        ),
        click.option(
            "--max-degradation",
            default=0.02,
            show_default=True,
            type=click.FloatRange(0, 1),
            help="Allowed drop of the gate metric against the champion.",
        ),
        click.option(
            "--canary-percent",
            "canary_traffic_percent",
            default=10,
            show_default=True,
            type=click.IntRange(0, 100),
            help="Traffic share of a new revision when one already serves.",
        ),
    ]
    func = model_name_option()(func)
    for option in reversed(options):
        func = option(func)
    return func


@click.command()
@pipeline_options
@click.option("-v", "--verbose", is_flag=True, help="Show every step's output.")
@click.option(
    "--rollout",
    type=click.Choice(["manual", "auto"]),
    default="manual",
    show_default=True,
    help="auto: after deploying a canary, run `mlops rollout` with its defaults on the "
    "running `mlops serve` (exit 0 promoted, 3 rolled back); manual: leave the canary.",
)
@click.option(
    "--keep-runs",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Keep the step artifacts of this many newest runs under <state dir>/pipeline_root.",
)
def run(verbose: bool, rollout: str, keep_runs: int, **arguments: Any) -> None:
    """Run the whole pipeline locally (kfp.local) and deploy to the local InferenceService.

    Writes an HTML report of the run (metrics, confusion matrix, ROC curve, the gate's
    decision) under the state directory and prints its path.

    Exit codes: 0 deployed (or promoted, --rollout auto); 1 an error; 3 the canary was
    rolled back, 4 its rollout stopped by someone else's change (--rollout auto); 5 the gate
    refused the model.
    """
    from pipelines.local import run_locally

    if rollout == "auto":
        from mlops.cli.rollout import check_server

        check_server(arguments["model_name"])
    summary = run_locally(arguments, state_dir(), verbose=verbose, keep_runs=keep_runs)
    click.echo("")
    for key, value in sorted(summary.metrics.items()):
        if not key.startswith("baseline_"):
            click.echo(f"  {key:<20} {value:.4f}")
    metric = arguments["gate_metric"]
    if f"baseline_{metric}" in summary.metrics:
        click.echo(
            f"  always the majority class: {metric} {summary.metrics[f'baseline_{metric}']:.4f}"
        )
    verdict = click.style(
        "deploy" if summary.deploy else "gated",
        bold=True,
        fg="green" if summary.deploy else "yellow",
    )
    click.echo(f"decision: {verdict}: {summary.reason}")
    click.echo(f"mlflow run: {summary.mlflow_run_id}")
    if summary.version is not None:
        click.echo(
            f"model: {arguments['model_name']} version {summary.version} at {summary.storage_uri}"
        )
        click.echo(f"InferenceService: `mlops get {summary.isvc_name}`; serve it: `mlops serve`")
    else:
        click.echo("model: not uploaded; the serving InferenceService is unchanged")
    if summary.report is not None:
        click.echo(f"report: {summary.report}")
    click.echo(f"step logs: {summary.log_file}")
    if not summary.deploy:
        raise SystemExit(GATED_EXIT_CODE)
    if rollout == "auto":
        _auto_rollout(arguments["model_name"])


def _auto_rollout(name: str) -> None:
    """Roll out the canary just deployed, if the deploy made one (a first deploy does not)."""
    from mlops.cli.rollout import default_options, execute_rollout
    from serving import local_controller
    from serving.rollout import canary_pair

    state = local_controller.read_state(name, state_dir())
    try:
        canary_pair(state["inferenceService"], state["revisions"])
    except LookupError:
        click.echo("rollout: the first deploy takes all traffic; nothing to roll out")
        return
    execute_rollout(name, None, None, **default_options())


@click.command(name="compile")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=COMPILED_PIPELINE,
    show_default=True,
)
@click.option(
    "--scoring-output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=COMPILED_SCORING,
    show_default=True,
)
def compile_pipeline(output: Path, scoring_output: Path) -> None:
    """Compile both pipelines to KFP IR YAML (the files committed under pipelines/compiled/)."""
    from pipelines.compile import compile_scoring_to, compile_to

    for path in (compile_to(output), compile_scoring_to(scoring_output)):
        click.echo(f"wrote {path}")


def check_kfp_api(host: str) -> None:
    """One request to KFP's health endpoint, before the client's five retried ones.

    ``kfp.Client`` logs a traceback per attempt and sleeps 5 s between them when the host
    answers but is not the KFP API; an unreachable host raises from here, and the command line
    reports it in one line.

    Raises:
        click.ClickException: When the host answers, but not as the KFP API does.
    """
    import httpx

    url = f"{host.rstrip('/')}/apis/v2beta1/healthz"
    response = httpx.get(url, timeout=10)
    try:
        healthy = response.status_code == 200 and isinstance(response.json(), dict)
    except ValueError:
        healthy = False
    if not healthy:
        raise click.ClickException(
            f"{host} is not the KFP API: GET {url} answered {response.status_code} "
            f"{response.reason_phrase}; give --host the KFP endpoint, e.g. "
            "`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8888:80` and "
            "--host http://localhost:8888"
        )


def rollout_step_options(func: Any) -> Any:
    """The pipeline's rollout-step parameters (``submit``; locally, ``run --rollout auto``)."""
    options = [
        click.option(
            "--rollout-steps",
            default="",
            show_default=True,
            help="Canary shares in percent, e.g. 10,50,100: the pipeline's rollout step steps "
            "the new canary up and promotes or rolls it back. Empty: the canary waits for "
            "`mlops promote` / `mlops rollback`.",
        ),
        click.option(
            "--rollout-interval",
            "rollout_interval_s",
            default=60.0,
            show_default=True,
            type=float,
            help="Seconds of traffic the rollout step judges per step.",
        ),
        click.option(
            "--rollout-min-requests",
            default=50,
            show_default=True,
            type=int,
            help="Canary requests a window needs to be judged.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.command()
@click.option(
    "--host",
    required=True,
    envvar="KFP_HOST",
    help="KFP API endpoint, e.g. http://localhost:8888 (port-forwarded ml-pipeline-ui).",
)
@pipeline_options
@rollout_step_options
@click.option(
    "--namespace",
    default="kubeflow-user",
    show_default=True,
    help="Namespace of the InferenceService.",
)
@click.option("--store-uri", default="s3://models", show_default=True)
@click.option(
    "--tracking-uri",
    default=None,
    help="MLflow tracking URI as the pipeline pods see it (default: the pipeline's).",
)
@click.option(
    "--service-account",
    default="kserve-minio-sa",
    show_default=True,
    help="ServiceAccount whose Secret lets the predictor read the store.",
)
@click.option("--experiment", default="breast-cancer", show_default=True)
@click.option("--timeout", default=1800, show_default=True, type=int, help="Seconds to wait.")
def submit(
    host: str, experiment: str, timeout: int, tracking_uri: str | None, **arguments: Any
) -> None:
    """Submit the compiled pipeline to Kubeflow Pipelines, wait for it, print the run's URL.

    Every parameter is checked first (no run is created for a bad one); exit 0 when the run
    succeeded, 1 when it failed, timed out or KFP cannot be reached.
    """
    import warnings

    import kfp

    from mlops.parameters import check_parameters

    if tracking_uri:
        arguments["tracking_uri"] = tracking_uri
    arguments["deploy_target"] = "kubernetes"
    check_parameters(arguments)  # before a run is created; the pipeline checks again
    check_kfp_api(host)
    with warnings.catch_warnings():
        # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later": it does.
        warnings.simplefilter("ignore", FutureWarning)
        client = kfp.Client(host=host)
    run = client.create_run_from_pipeline_package(
        str(COMPILED_PIPELINE),
        arguments=arguments,
        experiment_name=experiment,
        enable_caching=False,
    )
    url = f"{host.rstrip('/')}/#/runs/details/{run.run_id}"
    click.echo(f"submitted run {run.run_id}: {url}")
    try:
        finished = client.wait_for_run_completion(run.run_id, timeout=timeout)
    except TimeoutError as err:
        raise RuntimeError(
            f"run {run.run_id} did not finish within --timeout {timeout} s; it goes on in KFP: "
            f"see {url}"
        ) from err
    state = str(finished.state)
    click.echo(f"run {run.run_id} finished: {state}")
    if state != "SUCCEEDED":
        raise RuntimeError(f"run {run.run_id} ended {state}; see {url}")


COMMANDS = [run, compile_pipeline, submit]
