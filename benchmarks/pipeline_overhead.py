"""What kfp.local costs: the local pipeline run vs the same step functions in one process.

Both paths do the same work on the default dataset in a fresh state directory (first deploy,
no champion): load, validate, train, evaluate, MLflow run + registry, publish to the store,
apply the InferenceService locally. The pipeline path adds what KFP adds: one subprocess per
step (a fresh interpreter importing the libraries again), artifact files between steps, and
the orchestrator.

Usage: .venv/bin/python benchmarks/pipeline_overhead.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


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


def run_pipeline(home: Path) -> None:
    """The same work through kfp.local's SubprocessRunner."""
    from pipelines.local import run_locally

    summary = run_locally({}, home)
    assert summary.version == 1, summary


def _timed(func, repeats: int, root: Path) -> list[float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        # Kept until the end: MLflow caches a database engine per tracking URI.
        home = Path(tempfile.mkdtemp(dir=root)) / ".mlops"
        home.mkdir()
        os.environ["MLOPS_HOME"] = str(home)
        start = time.perf_counter()
        func(home)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    for name in ("MLOPS_STORE_URI", "MLFLOW_TRACKING_URI"):
        os.environ.pop(name, None)
    with tempfile.TemporaryDirectory() as tmp:
        # Warm once so the direct path does not pay for first imports in this process.
        _timed(run_direct, 1, Path(tmp))
        direct = _timed(run_direct, repeats, Path(tmp))
        pipeline = _timed(run_pipeline, repeats, Path(tmp))
    d, p = statistics.median(direct), statistics.median(pipeline)
    print(f"{'path':<32}{'median s':>10}{'min s':>10}{'max s':>10}")
    print(f"{'steps called directly':<32}{d:>10.2f}{min(direct):>10.2f}{max(direct):>10.2f}")
    print(
        f"{'kfp.local pipeline (6 steps)':<32}{p:>10.2f}{min(pipeline):>10.2f}"
        f"{max(pipeline):>10.2f}"
    )
    print(
        f"overhead: {p - d:.2f} s per run, ratio pipeline/direct = {p / d:.1f}x "
        f"({repeats} repeats, fresh state each)"
    )


if __name__ == "__main__":
    main()
