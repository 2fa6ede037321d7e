"""What kfp.local costs: `mlops run` vs one fresh process calling the same step functions.

Every figure is a whole process, started fresh, so imports count on both sides:

- ``direct``: one ``python`` process that calls the pipeline's step functions in turn (the
  components' own functions: check, load, validate, train, evaluate, upload, deploy), in a
  fresh state directory (first deploy, no champion);
- ``mlops run, first``: ``mlops run`` in a fresh state directory (the same work, plus what KFP
  adds: one subprocess per step, artifact files between steps, the orchestrator, and the first
  set-up of the MLflow database);
- ``mlops run, later``: ``mlops run`` again in the same state directory (version 2 becomes a
  canary; the champion is scored too).

The three are interleaved within each repeat so that a busy machine hurts them alike. It prints
the medians and the two ratios the project aims at: first run / direct (goal <= 2) and first
run / later run (goal <= 1.5).

Usage: .venv/bin/python benchmarks/pipeline_overhead.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_direct(home: Path) -> None:
    """The pipeline's step functions, called in turn in this process (no KFP in between).

    They are the components' own Python functions (``python_func``), with the arguments
    ``mlops run`` gives them and their artifacts in files under ``home``: the same code, so
    the difference is exactly what kfp.local adds.
    """
    from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Metrics, Model

    from components import (
        check_parameters,
        deploy_model,
        evaluate,
        load_data,
        train,
        upload_model,
        validate_data,
    )
    from mlops.settings import default_store_uri, default_tracking_uri

    files = home / "artifacts"
    files.mkdir(parents=True)
    label, name, tracking = "target", "breast-cancer", default_tracking_uri()
    hyperparameters = {"C": 1.0, "max_iter": 1000}
    check_parameters.python_func(
        model_name=name,
        canary_traffic_percent=10,
        test_size=0.2,
        gate_metric="accuracy",
        min_score=0.9,
        max_degradation=0.02,
        label_noise=0.0,
        min_rows=100,
        seed=42,
        estimator="logistic_regression",
        hyperparameters=hyperparameters,
        namespace="default",
        service_account="kserve-minio-sa",
        deploy_target="local",
    )
    dataset = Dataset(uri=str(files / "dataset"))
    load_data.python_func(source="sklearn:breast_cancer", dataset=dataset)
    reference = Artifact(uri=str(files / "reference"))
    fingerprint = validate_data.python_func(
        dataset=dataset, label_column=label, min_rows=100, expected_columns=[], reference=reference
    )
    model, holdout = Model(uri=str(files / "model")), Dataset(uri=str(files / "holdout"))
    train.python_func(
        dataset=dataset,
        label_column=label,
        estimator="logistic_regression",
        hyperparameters=hyperparameters,
        test_size=0.2,
        seed=42,
        label_noise=0.0,
        model=model,
        holdout=holdout,
    )
    metrics = Metrics(uri=str(files / "metrics"))
    deploy, _, run_id = evaluate.python_func(
        model=model,
        holdout=holdout,
        label_column=label,
        model_name=name,
        gate_metric="accuracy",
        min_score=0.9,
        max_degradation=0.02,
        tracking_uri=tracking,
        deploy_target="local",
        namespace="default",
        state_dir=str(home),
        data_source="sklearn:breast_cancer",
        data_fingerprint=fingerprint,
        metrics=metrics,
        classification=ClassificationMetrics(uri=str(files / "curves")),
        report=HTML(uri=str(files / "report.html")),
    )
    assert deploy, "a first run deploys"
    version, storage_uri = upload_model.python_func(
        model=model,
        metrics=metrics,
        reference=reference,
        data_fingerprint=fingerprint,
        model_name=name,
        store_uri=default_store_uri(),
        mlflow_run_id=run_id,
    )
    deploy_model.python_func(
        storage_uri=storage_uri,
        model_version=version,
        model_name=name,
        namespace="default",
        canary_traffic_percent=10,
        service_account="kserve-minio-sa",
        target="local",
        state_dir=str(home),
        tracking_uri=tracking,
        mlflow_run_id=run_id,
    )


def _timed_process(command: list[str], home: Path) -> float:
    """Run ``command`` with ``MLOPS_HOME=home``; its wall time in seconds (it must succeed)."""
    env = {**os.environ, "MLOPS_HOME": str(home), "PYTHONPATH": str(ROOT)}
    for name in ("MLOPS_STORE_URI", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return elapsed


def measure(repeats: int) -> dict[str, list[float]]:
    """Time the three paths ``repeats`` times, interleaved, each in its own fresh state dir."""
    direct = [sys.executable, __file__, "--direct"]
    mlops_run = [sys.executable, "-m", "mlops.cli", "run"]
    times: dict[str, list[float]] = {"direct": [], "first": [], "later": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(repeats):
            direct_home = Path(tmp) / f"direct-{repeat}" / ".mlops"
            run_home = Path(tmp) / f"run-{repeat}" / ".mlops"
            times["direct"].append(_timed_process(direct, direct_home))
            times["first"].append(_timed_process(mlops_run, run_home))
            times["later"].append(_timed_process(mlops_run, run_home))
    return times


def print_table(times: dict[str, list[float]]) -> None:
    """Medians (min, max) of each path and the two ratios."""
    rows = {
        "direct": "direct, one fresh process",
        "first": "mlops run, fresh state dir",
        "later": "mlops run, same dir again",
    }
    print(f"{'path (whole process)':<30}{'median s':>10}{'min s':>8}{'max s':>8}")
    for key, label in rows.items():
        values = times[key]
        print(
            f"{label:<30}{statistics.median(values):>10.2f}{min(values):>8.2f}{max(values):>8.2f}"
        )
    direct, first, later = (statistics.median(times[k]) for k in ("direct", "first", "later"))
    repeats = len(times["direct"])
    print(f"first run / direct     = {first / direct:.2f}x (goal <= 2)")
    print(f"first run / later run  = {first / later:.2f}x (goal <= 1.5)")
    print(f"({repeats} repeats, medians; a busy machine makes every figure noisy)")


def main() -> None:
    """Measure and print, or (``--direct``) be the direct process itself."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--direct", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.direct:
        sys.path.insert(0, str(ROOT))
        home = Path(os.environ["MLOPS_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        run_direct(home)
        return
    print_table(measure(args.repeats))


if __name__ == "__main__":
    main()
