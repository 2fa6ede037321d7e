"""`mlops run` stopped by a signal, a run that died after publishing, and `--keep-runs`.

The signals go to a real `mlops run` process whose steps are real kfp.local subprocesses; the
step processes are found in its process tree (kfp 2.17 starts each with ``sh -ec ... python -m
kfp.dsl.executor_main``, ``kfp/local/subprocess_task_handler.py``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import joblib
import psutil
import pytest

from mlops import registry
from mlops.publishing import publish_model
from mlops.store import sha256_file
from pipelines.local import run_locally
from pipelines.step_processes import prune_runs

MODEL = "breast-cancer"
ROOT = Path(__file__).resolve().parents[2]


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLOPS_STORE_URI", "MLFLOW_TRACKING_URI", "MLOPS_S3_ENDPOINT")}
    return {**env, "MLOPS_HOME": str(home), "PYTHONPATH": str(ROOT)}


def _running_step(
    run: subprocess.Popen[str], task: str, timeout_s: float = 180
) -> list[psutil.Process]:
    """Wait until step ``task`` runs under ``run``; return the whole tree below it then.

    A step's executor input names its outputs under ``<pipeline_root>/<run>/<task>/``.
    """
    deadline = time.monotonic() + timeout_s
    parent = psutil.Process(run.pid)
    while time.monotonic() < deadline:
        assert run.poll() is None, f"mlops run ended before {task} ran"
        tree = parent.children(recursive=True)
        for process in _alive(tree):
            with contextlib.suppress(psutil.NoSuchProcess):
                command = " ".join(process.cmdline())
                if "kfp.dsl.executor_main" in command and f"/{task}/" in command:
                    return tree
        time.sleep(0.05)
    raise AssertionError(f"{task} did not start within the timeout")


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    found = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_mlops_run_stops_its_step_and_no_step_process_outlives_the_run(
    tmp_path: Path, signum: signal.Signals
) -> None:
    home = tmp_path / ".mlops"
    run = subprocess.Popen(
        [sys.executable, "-m", "mlops.cli", "run"], cwd=tmp_path, env=_clean_env(home),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    steps: list[psutil.Process] = []
    try:
        # evaluate takes seconds (it opens MLflow): the signal comes while it works.
        steps = _running_step(run, "evaluate")
        time.sleep(0.5)
        run.send_signal(signum)
        output, _ = run.communicate(timeout=120)
        survivors = _alive(steps)
    finally:
        for process in _alive(steps):  # the old behaviour: do not leave them to the machine
            process.kill()
        if run.poll() is None:
            run.kill()
    assert survivors == [], f"step processes outlived the run: {[p.pid for p in survivors]}"
    assert run.returncode == 128 + signum, output
    assert f"stopped by {signum.name}: the running step was sent {signum.name}" in output
    # The last step started is the stopped one: it failed, and nothing ran after it.
    log = (home / "logs" / "last-run.log").read_text()
    last = log.split("Executing task")[-1]
    assert "finished with status" in last and "SUCCESS" not in last, last[-400:]


def test_a_version_left_by_a_run_that_died_is_registered_abandoned_so_numbers_agree(
    tmp_path: Path, tiny_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped between upload_model and deploy_model left store version 1; the next run
    publishes version 2, and MLflow's version 2 is the store's version 2."""
    home = tmp_path / ".mlops"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    for name in ("MLOPS_STORE_URI", "MLFLOW_TRACKING_URI", "MLOPS_S3_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    model_file = tmp_path / "died.joblib"
    joblib.dump(tiny_model[0], model_file)
    died, _ = publish_model(str(home / "store"), MODEL, model_file,
                            {"sha256": sha256_file(model_file), "mlflow_run_id": "died-run"})
    assert died == 1
    # Old runs' step artifacts, as kfp.local names them; --keep-runs 2 keeps one and the new.
    root = home / "pipeline_root"
    olds = [root / f"train-gate-deploy-sklearn-2026-01-0{day}-00-00-00-000000" for day in (1, 2, 3)]
    for age, old in enumerate(olds):
        (old / "train").mkdir(parents=True)
        os.utime(old, (1_000_000 + age, 1_000_000 + age))
    (root / "notes").mkdir()  # not a run's directory: never touched

    summary = run_locally({}, home, keep_runs=2)

    assert summary.version == 2
    from mlflow import MlflowClient

    tracking = f"sqlite:///{home / 'mlflow.db'}"
    versions = MlflowClient(tracking_uri=tracking, registry_uri=tracking).search_model_versions(
        f"name='{MODEL}'")
    numbers = {int(v.version): v.tags for v in versions}
    assert {n: int(t["store_version"]) for n, t in numbers.items()} == {1: 1, 2: 2}
    assert "died-run" in numbers[1]["abandoned"]
    assert "abandoned" not in numbers[2]
    assert registry.version_of_alias(tracking, MODEL, registry.CHAMPION)[0] == 2
    kept = sorted(p.name for p in root.iterdir())
    assert olds[2].name in kept and olds[0].name not in kept and olds[1].name not in kept
    assert "notes" in kept and len(kept) == 3


def test_prune_runs_keeps_the_newest_run_directories_only(tmp_path: Path) -> None:
    runs = [tmp_path / f"p-2026-01-01-00-00-0{i}-000000" for i in range(4)]
    for age, run in enumerate(runs):
        run.mkdir()
        os.utime(run, (2_000_000 + age, 2_000_000 + age))
    (tmp_path / "p-2026-01-01-00-00-09-000000.txt").write_text("a file, not a run")
    assert prune_runs(tmp_path, 3) == runs[:1]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [r.name for r in runs[1:]] + ["p-2026-01-01-00-00-09-000000.txt"])
    assert prune_runs(tmp_path / "missing", 1) == []
