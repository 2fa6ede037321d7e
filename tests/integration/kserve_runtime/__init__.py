"""KServe's sklearn runtime (v0.20.0) replayed in its own venv: start it, wait for it, stop it.

``sklearnserver.py`` here runs under ``MLOPS_KSERVE_RUNTIME_PYTHON``; this module runs under the
project's Python and starts it as the ClusterServingRuntime starts the container (kserve@v0.20.0
config/runtimes/kserve-sklearnserver.yaml: ``--model_name={{.Name}} --model_dir=/mnt/models
--http_port=8080``), with a free HTTP port, and a free gRPC port for the gRPC server
``kserve.ModelServer`` also starts (8081 in the pod).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.serving_helpers import free_port, stop_process

SERVER = Path(__file__).with_name("sklearnserver.py")
RUNTIME_ENV = "MLOPS_KSERVE_RUNTIME_PYTHON"
# The container's args in the ClusterServingRuntime, {{.Name}} and the port filled in below.
RUNTIME_ARGS = ("--model_name={name}", "--model_dir={model_dir}", "--http_port={port}")


def runtime_python() -> str:
    """The runtime venv's Python (``make test`` builds it); a skip without one, as the storage
    replay does, and a failure when the variable names a missing file."""
    named = os.environ.get(RUNTIME_ENV)
    if named:
        if not Path(named).exists():
            pytest.fail(f"{RUNTIME_ENV}={named} does not exist: run `make test`", pytrace=False)
        return named
    pytest.skip(f"KServe's sklearn runtime venv is not set: `make test` builds it ({RUNTIME_ENV})")


@dataclass
class Runtime:
    process: subprocess.Popen[bytes]
    url: str
    name: str
    log: Path

    def infer_url(self) -> str:
        return f"{self.url}/v2/models/{self.name}/infer"

    def stop(self) -> None:
        stop_process(self.process)


def start_runtime(
    model_dir: Path, name: str, log_dir: Path, predict_proba: bool | None = None
) -> Runtime:
    """Start the sklearn runtime on ``model_dir`` (what the storage initializer leaves in
    /mnt/models); ``predict_proba`` sets ``PREDICT_PROBA`` (None: unset, as in the cluster)."""
    python = runtime_python()
    port = free_port()
    args = [a.format(name=name, model_dir=model_dir, port=port) for a in RUNTIME_ARGS]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PREDICT_PROBA")}
    if predict_proba is not None:
        env["PREDICT_PROBA"] = "true" if predict_proba else "false"
    log = log_dir / f"sklearnserver-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [python, str(SERVER), *args, f"--grpc_port={free_port()}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    runtime = Runtime(process, f"http://127.0.0.1:{port}", name, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the sklearn runtime exited {process.returncode}: {log.read_text()}"
            )
        try:
            ready = httpx.get(f"{runtime.url}/v2/models/{name}/ready", timeout=1)
            if ready.status_code == 200:
                return runtime
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    runtime.stop()
    raise RuntimeError(f"the sklearn runtime did not become ready: {log.read_text()}")
