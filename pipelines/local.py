"""Run the training pipeline on this machine with ``kfp.local`` (no cluster, same components).

The runner is KFP's ``SubprocessRunner`` without a venv: every step runs as a subprocess of
this very interpreter, so the project installed here is the project the steps import, as the
project image is in the cluster.

A SIGINT or SIGTERM to ``mlops run`` is forwarded to the running step (and what it started),
the run waits for it to end and starts no further step; a second signal kills the steps. Only
the newest ``keep_runs`` runs' artifacts are kept under ``pipeline_root``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from mlops import registry
from mlops.settings import DEFAULT_MODEL_NAME, default_store_uri, default_tracking_uri
from pipelines.step_processes import (
    DEFAULT_KEEP_RUNS,
    StepProcesses,
    forwarding_signals,
    prune_runs,
)

# The last "SomethingError: message" line a failed step printed is the cause worth showing.
_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)$")
# kfp.local's own progress lines (task started, task finished), shown even when not verbose.
_PROGRESS_LINE = re.compile(r" - INFO - (Running pipeline|Executing task|.* finished with status)")


class PipelineRunError(RuntimeError):
    """A step of the local run failed; the message is the step's own error line."""


class PipelineStopped(KeyboardInterrupt):
    """The run was stopped by a signal; its steps have ended. ``exit_code``: 128 + the signal."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


@dataclass
class LocalRunSummary:
    """What a local run decided and produced."""

    deploy: bool
    reason: str
    metrics: dict[str, float]
    mlflow_run_id: str
    version: int | None = None
    storage_uri: str | None = None
    isvc_name: str | None = None
    log_file: Path | None = None
    report: Path | None = None


def local_arguments(overrides: dict[str, Any], state_dir: Path) -> dict[str, Any]:
    """Pipeline arguments for a local run: local store, MLflow and deploy target.

    ``min_accuracy``, the gate floor's name before the gate metric could be chosen, is taken
    as ``min_score``.
    """
    from mlops.parameters import LEGACY_MIN_SCORE

    overrides = dict(overrides)
    if LEGACY_MIN_SCORE in overrides:
        overrides.setdefault("min_score", overrides.pop(LEGACY_MIN_SCORE))
    return {
        "store_uri": default_store_uri(),
        "tracking_uri": default_tracking_uri(),
        "deploy_target": "local",
        "namespace": "default",
        "state_dir": str(state_dir),
        "model_name": DEFAULT_MODEL_NAME,
        **overrides,
    }


class _Tee(io.TextIOBase):
    """Copy what the steps print into a log file; show KFP's progress (everything if verbose)."""

    def __init__(self, log: TextIO, terminal: TextIO, verbose: bool) -> None:
        self.log, self.terminal, self.verbose, self.error_line = log, terminal, verbose, ""
        self._listing = False  # whether the lines now are the "- ..." list of the error line

    def write(self, text: str) -> int:
        self.log.write(text)
        if self.verbose:
            self.terminal.write(text)
        elif _PROGRESS_LINE.search(text.split("\n", 1)[0]):
            self.terminal.write(text.split("\n", 1)[0] + "\n")
        for line in text.splitlines():
            match = _ERROR_LINE.match(line.strip())
            if match:
                self.error_line = f"{match.group(1)}: {match.group(2)}"
                self._listing = True
            elif self._listing and line.strip().startswith("- "):
                # An error that lists several problems (a table's validation) keeps its list.
                self.error_line += "\n" + line.strip()
            elif line.strip():  # print() writes the line's end apart: no end of the list
                self._listing = False
        return len(text)


@contextlib.contextmanager
def _captured_steps(log_file: Path, verbose: bool) -> Iterator[_Tee]:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(log_file, "w") as log,
        contextlib.redirect_stdout(_Tee(log, sys.stderr, verbose)) as tee,
    ):
        yield tee


class PreflightError(ValueError):
    """A check before the run failed; the message names the file or parameter and the fix."""


def preflight(arguments: dict[str, Any], state_dir: Path) -> None:
    """Check what can be checked before any step writes to the store, MLflow or serving state.

    The parameters, the data source, the store, the local serving state and the metadata of
    the versions it serves. A missing file or a corrupt state is a user mistake, not a
    transient fault: failing here takes a second and leaves nothing half-written.

    Raises:
        ParameterError: When a pipeline parameter is invalid.
        FileNotFoundError: When a local source does not exist.
        ValueError: When the source format is unsupported.
        StoreError: When an S3 store or source cannot be reached or refuses the credentials.
        PreflightError: When the serving state or a served version's metadata is unreadable.
    """
    from mlops.data import check_source
    from mlops.parameters import check_parameters
    from mlops.store import open_store

    check_parameters(arguments)
    check_source(str(arguments.get("source", "sklearn:breast_cancer")))
    store = open_store(str(arguments["store_uri"]))
    if arguments.get("deploy_target") == "local":
        _check_served_versions(str(arguments["model_name"]), store, state_dir)


def _check_served_versions(model_name: str, store: Any, state_dir: Path) -> None:
    """Read the local serving state and the ``metadata.json`` of every version it serves."""
    from mlops.store import METADATA_FILE
    from serving import local_controller

    path = local_controller.state_path(model_name, state_dir)
    try:
        state = local_controller.read_state(model_name, state_dir)
        targets = local_controller.traffic_targets(state)
    except local_controller.NotDeployedError:
        return
    except Exception as err:  # noqa: BLE001 (any unreadable state is the same user-facing fault)
        raise PreflightError(
            _naming(str(path), err, "restore it from a backup, or remove it to deploy from scratch")
        ) from err
    for target in targets:
        try:
            store.read_metadata(model_name, int(target.model_version))
        except Exception as err:  # noqa: BLE001
            where = f"{target.storage_uri.rstrip('/')}/{METADATA_FILE}"
            raise PreflightError(
                _naming(
                    where, err, f"restore that file (it is read to serve and gate {model_name!r})"
                )
            ) from err


def _naming(where: str, err: Exception, fix: str) -> str:
    """One line: the file, what is wrong with it (the error's own words), and the fix."""
    cause = str(err).splitlines()[0] if str(err) else type(err).__name__
    if where in cause:
        return f"{cause}; {fix}"
    return f"{where} is unreadable ({cause}); {fix}"


def code_version() -> str:
    """The git commit of the working tree, or the package version outside a checkout."""
    import mlops

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return mlops.__version__


class _BackgroundCall(threading.Thread):
    """``func(*args)`` in a daemon thread; an error is kept, not raised (the step reports it)."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        super().__init__(daemon=True)
        self.func, self.args = func, args
        self.error: Exception | None = None
        self.start()

    def run(self) -> None:
        try:
            self.func(*self.args)
        except Exception as err:  # noqa: BLE001
            self.error = err


def run_locally(
    arguments: dict[str, Any],
    state_dir: Path,
    *,
    verbose: bool = False,
    keep_runs: int = DEFAULT_KEEP_RUNS,
) -> LocalRunSummary:
    """Run the pipeline with ``kfp.local`` and summarize it from MLflow and the store.

    Args:
        arguments: Pipeline arguments (see ``training_pipeline``); local defaults are added.
        state_dir: The project's state directory (``.mlops``).
        verbose: Echo every step's output, not only KFP's progress lines.
        keep_runs: Keep the artifacts of this many newest runs under ``pipeline_root``.

    Raises:
        PipelineRunError: When a step fails, with that step's error line.
        PipelineStopped: When SIGINT or SIGTERM stopped the run (its steps have ended).
        ParameterError, PreflightError, StoreError, FileNotFoundError: From ``preflight``,
            before anything is written.
    """
    from kfp import local

    from pipelines.training import training_pipeline

    arguments = local_arguments(arguments, state_dir)
    preflight(arguments, state_dir)
    os.environ.setdefault("MLOPS_CODE_VERSION", code_version())
    # A new local MLflow database takes seconds to create: do it here while the first steps
    # (which do not use MLflow) run; the first step that does waits for it (a lock file).
    database = _BackgroundCall(registry.prepare_local_database, str(arguments["tracking_uri"]))
    pipeline_root = state_dir / "pipeline_root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    log_file = state_dir / "logs" / "last-run.log"
    steps = StepProcesses()
    with (
        warnings.catch_warnings(),
        _captured_steps(log_file, verbose) as tee,
        forwarding_signals(steps),
    ):
        # kfp warns when an image name lacks "python"; ours is the project image.
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            outputs = training_pipeline(**arguments)
        except RuntimeError as err:
            if steps.stopped_by:
                raise _stopped(steps.stopped_by, log_file) from err
            raise PipelineRunError(tee.error_line or f"{err} (see {log_file})") from err
        finally:
            # Its failure, if any, is also the failing step's own error (shown above).
            database.join()
            prune_runs(pipeline_root, keep_runs)
    if steps.stopped_by:  # the signal came after the last step had ended
        raise _stopped(steps.stopped_by, log_file)
    summary = _summarize(outputs.outputs, arguments, log_file)
    summary.report = _keep_report(outputs.outputs.get("report"), state_dir, summary.mlflow_run_id)
    return summary


def _keep_report(artifact: Any, state_dir: Path, run_id: str) -> Path | None:
    """Copy the evaluate step's HTML report to ``<state dir>/reports/<run id>.html``."""
    import shutil

    source = getattr(artifact, "path", None)
    if not source or not Path(source).is_file():
        return None
    dest = state_dir / "reports" / f"{run_id}.html"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, dest)
    return dest


def _stopped(signum: int, log_file: Path) -> PipelineStopped:
    name = signal.Signals(signum).name
    return PipelineStopped(
        signum,
        f"stopped by {name}: the running step was sent {name} and has ended, no further step "
        f"ran (see {log_file}); a version it published is adopted or marked abandoned by the "
        "next run's deploy step",
    )


def _summarize(outputs: dict[str, Any], arguments: dict[str, Any], log: Path) -> LocalRunSummary:
    import mlflow

    run_id = str(outputs["mlflow_run_id"])
    client = mlflow.MlflowClient(tracking_uri=arguments["tracking_uri"])
    metrics = client.get_run(run_id).data.metrics
    summary = LocalRunSummary(
        deploy=bool(outputs["deploy"]),
        reason=str(outputs["reason"]),
        metrics=dict(metrics),
        mlflow_run_id=run_id,
        log_file=log,
    )
    if summary.deploy:
        version = registry.version_of_run(
            arguments["tracking_uri"], arguments["model_name"], run_id
        )
        if version:
            summary.version, summary.storage_uri = version
            summary.isvc_name = arguments["model_name"]
    return summary
