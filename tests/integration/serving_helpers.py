"""Helpers for the serving tests: store versions, deploys, real `mlops serve` processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from mlops.store import LocalStore, ModelStore, sha256_file
from mlops.validation import reference_statistics
from serving import local_controller
from serving.deploy import deploy_inference_service
from serving.inference_service import PredictorSettings

NAME = "breast-cancer"
MLOPS = str(Path(sys.executable).with_name("mlops"))


@dataclass(frozen=True)
class Served:
    """A running server and what it serves."""

    url: str
    home: Path
    log: Path
    models: dict[str, Pipeline]
    rows: np.ndarray

    def infer_url(self, version: str | None = None) -> str:
        middle = f"/versions/{version}" if version else ""
        return f"{self.url}/v2/models/{NAME}{middle}/infer"

    def state(self) -> dict[str, Any]:
        return local_controller.read_state(NAME, self.home)

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


def v2_body(rows: np.ndarray, **parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(rows.shape),
                "datatype": "FP64",
                "data": rows.ravel().tolist(),
            }
        ]
    }
    if parameters:
        body["parameters"] = parameters
    return body


def fit(frame: pd.DataFrame, c: float) -> Pipeline:
    features = frame.drop(columns=["target"]).to_numpy(dtype=float)
    estimator = LogisticRegression(C=c, max_iter=500)
    model = Pipeline([("scale", StandardScaler()), ("model", estimator)])
    return model.fit(features, frame["target"].to_numpy())


def publish(
    home: Path, model: Pipeline, frame: pd.DataFrame, tmp: Path, store: ModelStore | None = None
) -> tuple[int, str]:
    """Publish ``model`` as the next version of ``store`` (default: the local store in ``home``).

    Returns:
        ``(version, storage_uri)``.
    """
    path = tmp / f"model-{time.monotonic_ns()}.joblib"
    joblib.dump(model, path)
    metadata = {
        "sha256": sha256_file(path),
        "feature_names": [c for c in frame.columns if c != "target"],
        "reference_statistics": reference_statistics(frame, "target"),
    }
    store = store or LocalStore(home / "store")
    version = store.publish(NAME, path, metadata)
    return version, store.version_uri(NAME, version)


def deploy(home: Path, version: int, storage_uri: str, canary: int | None = None) -> dict[str, Any]:
    settings = PredictorSettings(
        name=NAME, storage_uri=storage_uri, model_version=version, canary_traffic_percent=canary
    )
    return deploy_inference_service(settings, "local", home)


def deploy_champion_and_canary(home: Path, frame: pd.DataFrame, tmp: Path) -> dict[str, Pipeline]:
    """Versions 1 and 2 deployed as `mlops run` twice would: 2 is a 10% canary of 1.

    Returns:
        The two models, by version.
    """
    models = {"1": fit(frame, 1.0), "2": fit(frame, 0.001)}
    for expected, model in models.items():
        version, uri = publish(home, model, frame, tmp)
        assert str(version) == expected
        deploy(home, version, uri, canary=10)
    return models


def mlops(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the ``mlops`` CLI with ``MLOPS_HOME=home`` (and ``env``); its exit code and output."""
    environ = {**os.environ, "MLOPS_HOME": str(home), **env}
    return subprocess.run([MLOPS, *args], capture_output=True, text=True, env=environ, timeout=120)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[Any]) -> None:
    """SIGTERM ``process`` and wait for it; kill it when it has not ended after 15 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    url: str
    log: Path
    errors: Path

    def stop(self) -> None:
        stop_process(self.process)


def start_server(
    home: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> ServerProcess:
    """Start `mlops serve` on a free port and wait until it is ready.

    ``env`` adds to this process's environment; ``preexec_fn`` runs in the child before it
    starts (e.g. to lower its open-file limit).
    """
    port = free_port()
    log, errors = home / f"requests-{port}.jsonl", home / f"server-{port}.log"
    env = {**os.environ, "MLOPS_HOME": str(home), **(env or {})}
    with open(log, "wb") as out, open(errors, "wb") as err:
        process = subprocess.Popen(
            [MLOPS, "serve", "--port", str(port), "--poll-interval", "0.1", *extra],
            stdout=out,
            stderr=err,
            env=env,
            preexec_fn=preexec_fn,
        )
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log, errors)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlops serve exited {process.returncode}: {errors.read_text()}")
        try:
            if httpx.get(f"{server.url}/v2/health/ready", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"mlops serve did not become ready: {errors.read_text()}")


def wait_for(condition: Any, timeout_s: float = 10.0, interval_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s")


def register_versions(home: Path, tmp: Path, versions: range | list[int]) -> None:
    """Register store ``versions`` in the state directory's MLflow, as `mlops run` does.

    `mlops promote` and `mlops rollback` refuse while a model serves and the registry is
    missing or empty; tests that deploy with ``deploy`` directly register with this first.
    """
    from mlops import registry

    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    logged = tmp / "logged.joblib"
    if not logged.exists():
        joblib.dump(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), logged)
    store = LocalStore(home / "store")
    for version in versions:
        run_id = registry.log_training_run(tracking_uri, NAME, {}, {"f1": 0.9}, logged, {})
        uri = store.version_uri(NAME, version)
        registry.register_version(tracking_uri, NAME, run_id, version, uri)
