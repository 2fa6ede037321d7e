"""What kfp.local costs: `mlops run` vs one fresh process calling the same step functions.

Every figure is a whole process, started fresh, so imports count on both sides:

- ``direct``: one ``python`` process that calls the pipeline's step functions in turn (load,
  validate, train, evaluate, MLflow run + registry, publish to the store, apply the
  InferenceService locally), in a fresh state directory (first deploy, no champion);
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
    """The pipeline's steps as plain function calls, in this process."""
    import joblib

    from mlops import registry
    from mlops.data import load_table
    from mlops.evaluation import decide_deployment, score_classifier
    from mlops.publishing import build_metadata, publish_model
    from mlops.settings import default_store_uri, default_tracking_uri
    from mlops.training import fit_classifier, split_holdout
    from mlops.validation import data_fingerprint, reference_statistics, validate_table
    from serving.deploy import deploy_inference_service
    from serving.inference_service import PredictorSettings

    tracking_uri, label = default_tracking_uri(), "target"
    frame = load_table("sklearn:breast_cancer")
    validate_table(frame, label, min_rows=100)
    reference, fingerprint = reference_statistics(frame, label), data_fingerprint(frame)
    train_rows, holdout = split_holdout(frame, label, 0.2, seed=42)
    hyperparameters = {"C": 1.0, "max_iter": 1000}
    model = fit_classifier(train_rows, label, "logistic_regression", hyperparameters, 42)
    model_path = home / "model.joblib"
    joblib.dump(model, model_path)
    features = holdout.drop(columns=[label]).to_numpy(dtype=float)
    scores = score_classifier(model, features, holdout[label].to_numpy())
    decision = decide_deployment(scores, None, min_accuracy=0.9, max_degradation=0.02)
    params = {"estimator": "logistic_regression", "hyperparameters": hyperparameters}
    run_id = registry.log_training_run(
        tracking_uri, "breast-cancer", params, scores, model_path, {"deploy": str(decision.deploy)}
    )
    metadata = build_metadata(
        model_path, scores, fingerprint, params, reference, list(frame.columns[:-1]), "1.5.2"
    )
    version, uri = publish_model(default_store_uri(), "breast-cancer", model_path, metadata)
    registry.register_version(tracking_uri, "breast-cancer", run_id, version, uri)
    settings = PredictorSettings(name="breast-cancer", storage_uri=uri, model_version=version)
    deploy_inference_service(settings, "local", home)
    registry.move_alias(tracking_uri, "breast-cancer", version, registry.CHAMPION)


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
