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
import shutil
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mlops import registry
from mlops.settings import DEFAULT_MODEL_NAME, default_store_uri, default_tracking_uri

# The last "SomethingError: message" line a failed step printed is the cause worth showing.
_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)$")
# kfp.local's own progress lines (task started, task finished), shown even when not verbose.
_PROGRESS_LINE = re.compile(r" - INFO - (Running pipeline|Executing task|.* finished with status)")
# kfp.local names each run's directory under pipeline_root "<pipeline>-<timestamp>"
# (kfp 2.17 kfp/local/executor_input_utils.py, get_local_pipeline_resource_name).
_RUN_DIRECTORY = re.compile(r"^[a-z0-9][a-z0-9-]*-\d{4}(-\d{2}){5}-\d{6}$")
DEFAULT_KEEP_RUNS = 20


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


def local_arguments(overrides: dict[str, Any], state_dir: Path) -> dict[str, Any]:
    """Pipeline arguments for a local run: local store, MLflow and deploy target."""
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


@dataclass
class _StepProcesses:
    """The step processes of a run, and the signal that stops it (``0``: none yet).

    The signal handler only reads the set and sends signals, and the step launcher checks the
    flag again after it registered its process, so a step started while the signal arrives is
    stopped too; no lock, which the handler (run in the main thread) could deadlock on.
    """

    live: set[subprocess.Popen[str]] = field(default_factory=set)
    stopped_by: int = 0
    signals: int = 0

    def stop(self, signum: int, _frame: Any = None) -> None:
        self.signals += 1
        self.stopped_by = self.stopped_by or signum
        # A second signal does not wait any longer: the steps are killed.
        forward = signum if self.signals == 1 else signal.SIGKILL
        for process in list(self.live):
            _signal_tree(process.pid, forward)


def _signal_tree(pid: int, signum: int) -> None:
    """Send ``signum`` to ``pid`` and every process it started (a step's own children)."""
    import psutil

    try:
        parent = psutil.Process(pid)
        family = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signum)


def _step_launcher(steps: _StepProcesses) -> Callable[..., int]:
    """``kfp.local``'s ``run_local_subprocess``, recording each step process for ``steps``.

    The same contract as kfp 2.17's (``kfp/local/subprocess_task_handler.py``): start the
    command with ``env_vars`` over this environment, print its merged output line by line,
    return its exit code. A stopped run starts no step.
    """

    def run_step(full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
        if steps.stopped_by:
            return 128 + steps.stopped_by
        env = {**os.environ, **env_vars} if env_vars else None
        with subprocess.Popen(
            full_command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,  # line by line, as kfp.local does
            env=env,
        ) as process:
            steps.live.add(process)
            try:
                if steps.stopped_by:  # the signal came while the step was being started
                    _signal_tree(process.pid, steps.stopped_by)
                for line in iter(process.stdout.readline, "") if process.stdout else ():
                    print(line, end="")
                print("\n")
                return process.wait()
            finally:
                steps.live.discard(process)

    return run_step


@contextlib.contextmanager
def _forwarding_signals(steps: _StepProcesses) -> Iterator[None]:
    """SIGINT and SIGTERM stop the steps (``steps.stop``) while the run is under way.

    kfp.local starts each step with ``subprocess.Popen`` in its module
    ``subprocess_task_handler`` (kfp 2.17); its ``run_local_subprocess`` is replaced by
    ``_step_launcher`` for the run, so every step process is known. Outside the main thread
    (signals cannot be handled there) nothing changes.
    """
    from kfp.local import subprocess_task_handler

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, steps.stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    original = subprocess_task_handler.run_local_subprocess
    subprocess_task_handler.run_local_subprocess = _step_launcher(steps)
    try:
        yield
    finally:
        subprocess_task_handler.run_local_subprocess = original
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def prune_runs(pipeline_root: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` runs' directories under ``pipeline_root``.

    Only directories named as kfp.local names a run's are touched; returns what was removed.
    """
    if not pipeline_root.is_dir():
        return []
    runs = sorted(
        (p for p in pipeline_root.iterdir() if p.is_dir() and _RUN_DIRECTORY.match(p.name)),
        key=lambda p: (p.stat().st_mtime, p.name),
    )
    removed = runs[: max(len(runs) - keep, 0)]
    for old in removed:
        shutil.rmtree(old, ignore_errors=True)
    return removed


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
    steps = _StepProcesses()
    with (
        warnings.catch_warnings(),
        _captured_steps(log_file, verbose) as tee,
        _forwarding_signals(steps),
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
    return _summarize(outputs.outputs, arguments, log_file)


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
