"""The signal forwarding of ``pipelines.step_processes`` on real child processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from pipelines.step_processes import StepProcesses

# A step that ignores SIGTERM (and a child it started, which does too).
_STUBBORN = (
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def test_a_second_signal_kills_a_step_that_ignores_the_first_and_its_children() -> None:
    import psutil

    step = subprocess.Popen([sys.executable, "-c", _STUBBORN], stdout=subprocess.PIPE, text=True)
    try:
        assert step.stdout is not None and step.stdout.readline() == "ready\n"
        family = [psutil.Process(step.pid), *psutil.Process(step.pid).children(recursive=True)]
        assert len(family) == 2
        steps = StepProcesses(live={step})
        steps.stop(signal.SIGTERM)
        time.sleep(0.5)
        assert step.poll() is None, "the step ignores SIGTERM"
        assert steps.stopped_by == signal.SIGTERM
        steps.stop(signal.SIGINT)  # the second signal: SIGKILL to the step and its child
        assert step.wait(timeout=10) == -signal.SIGKILL
        _, alive = psutil.wait_procs(family[1:], timeout=10)
        assert alive == []
        assert steps.stopped_by == signal.SIGTERM  # the first signal is the one reported
    finally:
        for process in psutil.Process().children(recursive=True):
            process.kill()
