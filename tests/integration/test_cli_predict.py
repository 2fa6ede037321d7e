"""`mlops predict` and `mlops drift` against a real `mlops serve`, as a script uses them.

The served version carries class names (metadata ``classes`` / ``class_names``), so the header
can name each probability column; drift reads "not enough rows" until the rollout's minimum.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline

from mlops.store import LocalStore, sha256_file
from mlops.validation import reference_statistics
from tests.integration.serving_helpers import MLOPS, NAME, deploy, fit, start_server

CLASS_NAMES = ["malignant", "benign"]  # sklearn's load_breast_cancer().target_names


@dataclass
class Named:
    url: str
    home: Path
    model: Pipeline
    frame: pd.DataFrame


@pytest.fixture(scope="module")
def named(
    tmp_path_factory: pytest.TempPathFactory, breast_cancer: pd.DataFrame
) -> Iterator[Named]:
    """Version 1 with class names in its metadata, served by `mlops serve`."""
    home = tmp_path_factory.mktemp("named") / ".mlops"
    model = fit(breast_cancer, 1.0)
    path = tmp_path_factory.mktemp("model") / "model.joblib"
    joblib.dump(model, path)
    metadata = {
        "sha256": sha256_file(path),
        "feature_names": [c for c in breast_cancer.columns if c != "target"],
        "reference_statistics": reference_statistics(breast_cancer, "target"),
        "classes": [0, 1],
        "class_names": CLASS_NAMES,
    }
    store = LocalStore(home / "store")
    version = store.publish(NAME, path, metadata)
    deploy(home, version, store.version_uri(NAME, version))
    server = start_server(home)
    try:
        yield Named(server.url, home, model, breast_cancer)
    finally:
        server.stop()


def _mlops(named: Named, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLOPS_HOME": str(named.home)}
    return subprocess.run(
        [MLOPS, *args, "--url", named.url], capture_output=True, text=True, env=env, timeout=60
    )


def _drift(named: Named) -> str:
    result = _mlops(named, "drift", "--top", "1")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_drift_reads_not_enough_rows_until_the_rollouts_minimum(named: Named) -> None:
    features = named.frame.drop(columns=["target"])
    path = named.home.parent / "ten.csv"
    features.head(10).to_csv(path, index=False)
    assert _mlops(named, "predict", str(path)).returncode == 0
    deadline = time.monotonic() + 10  # a worker counts its rows within one poll
    while "(10 of 200 needed)" not in (printed := _drift(named)) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert printed.strip() == (
        "breast-cancer-predictor-00001 (model version 1): 10 rows served: not enough rows "
        "(10 of 200 needed)"
    )
    for start in range(10, 410, 80):  # 80-row requests: each counted whole
        features.iloc[start : start + 80].to_csv(path, index=False)
        assert _mlops(named, "predict", str(path)).returncode == 0
    while "410 rows served, max PSI" not in (printed := _drift(named)):
        assert time.monotonic() < deadline + 10, printed
        time.sleep(0.3)
    assert "not enough rows" not in printed


def test_predict_reads_parquet_and_heads_probabilities_by_class_name(named: Named) -> None:
    path = named.home.parent / "rows.parquet"
    named.frame.head(5).to_parquet(path, index=False)  # with its label column, dropped
    result = _mlops(named, "predict", str(path), "--proba")
    assert result.returncode == 0, result.stderr
    summary, header, *rows = result.stdout.splitlines()
    assert summary.startswith("model breast-cancer version 1 answered 5 rows")
    assert header == "row\tmalignant\tbenign"
    printed = np.array([[float(p) for p in row.split("\t")[1:]] for row in rows])
    expected = named.model.predict_proba(named.frame.drop(columns=["target"]).head(5).to_numpy())
    np.testing.assert_allclose(printed, expected, atol=1e-4)


def test_predict_prints_each_label_with_its_class_name(named: Named) -> None:
    path = named.home.parent / "labels.csv"
    named.frame.head(4).to_csv(path, index=False)
    result = _mlops(named, "predict", str(path))
    assert result.returncode == 0, result.stderr
    _, header, *rows = result.stdout.splitlines()
    assert header == "row\tlabel\tclass_name"
    labels = named.model.predict(named.frame.drop(columns=["target"]).head(4).to_numpy())
    assert rows == [f"{i}\t{y}\t{CLASS_NAMES[y]}" for i, y in enumerate(labels.tolist())]


def test_predict_into_a_closed_pipe_stops_quietly_with_exit_0(named: Named) -> None:
    # 8,000 rows print ~100 KB, more than a pipe holds: the writes after `head` exits fail.
    big = pd.concat([named.frame] * 15, ignore_index=True).head(8000)
    path = named.home.parent / "big.csv"
    big.to_csv(path, index=False)
    env = {**os.environ, "MLOPS_HOME": str(named.home)}
    command = f"'{MLOPS}' predict '{path}' --url {named.url} | head -1"
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, env=env
    )
    assert result.stdout.startswith("model breast-cancer version 1 answered 8000 rows")
    assert result.stderr == ""
    assert result.returncode == 0
