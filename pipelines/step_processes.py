"""The step processes of a local run: signals forwarded to them, old runs' artifacts pruned.

kfp.local's ``SubprocessRunner`` starts each step with ``subprocess.Popen`` and waits for it
(kfp 2.17 ``kfp/local/subprocess_task_handler.py``, ``run_local_subprocess``), but nothing
passes a signal on: SIGTERM to ``mlops run`` left its step running. ``forwarding_signals``
records every step process and forwards SIGINT/SIGTERM to it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# kfp.local names each run's directory under pipeline_root "<pipeline>-<timestamp>"
# (kfp 2.17 kfp/local/executor_input_utils.py, get_local_pipeline_resource_name).
_RUN_DIRECTORY = re.compile(r"^[a-z0-9][a-z0-9-]*-\d{4}(-\d{2}){5}-\d{6}$")
DEFAULT_KEEP_RUNS = 20


@dataclass
class StepProcesses:
    """The step processes of a run, and the signal that stops it (``0``: none yet).

    The signal handler only reads the set and sends signals, and the step launcher checks the
    flag again after it registered its process, so a step started while the signal arrives is
    stopped too; no lock, which the handler (run in the main thread) could deadlock on.
    """

    live: set[subprocess.Popen[str]] = field(default_factory=set)
    stopped_by: int = 0
    signals: int = 0

    def stop(self, signum: int, _frame: Any = None) -> None:
        """The signal handler: forward ``signum`` to the steps (SIGKILL from the second on)."""
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


def _step_launcher(steps: StepProcesses) -> Callable[..., int]:
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
def forwarding_signals(steps: StepProcesses) -> Iterator[None]:
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
