"""PSI against the training reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops.validation import reference_statistics
from serving.drift import DriftMonitor, classify, psi


def test_psi_is_zero_for_the_reference_distribution_and_grows_with_a_shift() -> None:
    reference = np.full(10, 0.1)
    assert psi(reference, np.full(10, 50)) == pytest.approx(0.0)
    assert psi(reference, np.zeros(10)) == 0.0
    shifted = np.array([0, 0, 0, 0, 0, 10, 20, 20, 20, 30])
    assert psi(reference, shifted) > 0.25


def test_classify_uses_the_usual_thresholds() -> None:
    assert [classify(v) for v in (0.05, 0.1, 0.2, 0.25, 1.0)] == [
        "stable",
        "moderate",
        "moderate",
        "significant",
        "significant",
    ]


def test_the_monitor_sees_training_like_rows_as_stable_and_a_shifted_feature_as_drift(
    breast_cancer: pd.DataFrame,
) -> None:
    features = [c for c in breast_cancer.columns if c != "target"]
    monitor = DriftMonitor(features, reference_statistics(breast_cancer, "target"))
    rows = breast_cancer[features].to_numpy(dtype=float)
    shifted = rows.copy()
    shifted[:, 0] *= 3
    for start in range(0, len(rows), 100):
        monitor.observe(rows[start : start + 100])
    assert monitor.rows == len(rows)
    assert max(f.psi for f in monitor.report()) < 0.01
    for start in range(0, len(rows), 100):
        monitor.observe(shifted[start : start + 100])
        monitor.observe(shifted[start : start + 100])
    report = {f.feature: f for f in monitor.report()}
    assert report["mean radius"].psi > 0.25
    assert report["mean texture"].psi < 0.01
    assert report["mean radius"].served_mean > report["mean radius"].reference_mean


def test_a_reference_missing_a_feature_is_refused() -> None:
    with pytest.raises(ValueError, match=r"no entry for features \['b'\]"):
        DriftMonitor(["a", "b"], {"features": {"a": {}}})


def test_a_large_request_adds_an_even_sample_of_its_rows(breast_cancer: pd.DataFrame) -> None:
    features = [c for c in breast_cancer.columns if c != "target"]
    monitor = DriftMonitor(features, reference_statistics(breast_cancer, "target"))
    rows = breast_cancer[features].to_numpy(dtype=float)
    monitor.observe(np.concatenate([rows, rows]))  # 1138 rows
    assert monitor.rows == 95  # every 12th row


def test_an_empty_reference_or_served_bin_gives_a_finite_psi() -> None:
    reference = np.array([0.0, 0.5, 0.5])  # no training row fell in the first bin
    served_in_empty_bin = np.array([10, 5, 5])
    value = psi(reference, served_in_empty_bin)
    assert np.isfinite(value) and value > 0.25
    nothing_served_in_a_bin = psi(np.array([0.2, 0.4, 0.4]), np.array([0, 10, 10]))
    assert np.isfinite(nothing_served_in_a_bin) and nothing_served_in_a_bin > 0
    assert np.isfinite(psi(reference, np.array([0, 10, 10])))


def test_the_monitor_reports_a_finite_psi_for_values_outside_every_training_bin(
    breast_cancer: pd.DataFrame,
) -> None:
    features = [c for c in breast_cancer.columns if c != "target"]
    monitor = DriftMonitor(features, reference_statistics(breast_cancer, "target"))
    far = breast_cancer[features].to_numpy(dtype=float)[:50] * 100
    monitor.observe(far)
    assert all(np.isfinite(f.psi) and f.psi > 0.25 for f in monitor.report())


_WORKERS_SCRIPT = """
import json, multiprocessing, os, sys
import numpy as np
from mlops.data import load_table
from mlops.validation import reference_statistics
frame = load_table("sklearn:breast_cancer")
features = [c for c in frame.columns if c != "target"]
reference = reference_statistics(frame, "target")
rows = frame[features].to_numpy(dtype=float)
LABELS = ("m", "m-predictor-00001", "1")

def worker(start, stop):
    from serving.drift import DriftMonitor
    monitor = DriftMonitor(features, reference, LABELS)
    monitor.observe(rows[start:stop])  # held back: too few rows, too soon to count
    monitor.flush()  # what the router's state watcher does every poll

if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=worker, args=a) for a in ((0, 60), (60, 100))]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    from serving.drift import DriftMonitor
    monitor = DriftMonitor(features, reference, LABELS)
    print(json.dumps({"rows": monitor.rows, "psi": max(d.psi for d in monitor.report())}))
"""


def test_with_several_worker_processes_drift_adds_up_every_workers_rows(tmp_path) -> None:
    """PROMETHEUS_MULTIPROC_DIR: the counts come from every worker's counter files."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "workers.py"
    script.write_text(_WORKERS_SCRIPT)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["rows"] == 100  # 60 rows in one worker, 40 in the other, none in the reader
    assert report["psi"] > 0
