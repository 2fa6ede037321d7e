"""Replay of the cluster's MLflow container: the rendered Deployment's command, args and env.

`mlflow server` is a Python program, so it runs here exactly as the dev overlay starts it, with
only what cannot be the same on a laptop substituted: the SQLite path (a tmp dir), host and port
(loopback, a free port), the S3 endpoint and keys (the test S3 server, which issues its own).
It must answer ``/health`` within the startupProbe's budget and its whole process tree must stay
under the container's memory limit (issue 9, item 1: the old arguments used ~2.2 GB).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import find_object, render_overlay, secret_value

UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
# After /health answers, keep sampling while the server does some work (a few API calls).
SETTLE_SECONDS = 5


def _bytes(quantity: str) -> int:
    for suffix, factor in UNITS.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def _container_env(container: dict, objects: list[dict]) -> dict[str, str]:
    """The container's env as the kubelet resolves it (``value`` or ``secretKeyRef``)."""
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            secret = find_object(objects, "Secret", ref["name"])
            env[item["name"]] = secret_value(secret, ref["key"])
    return env


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def test_mlflow_with_the_manifests_args_starts_within_the_probe_budget_under_its_memory_limit(
    s3_server, tmp_path: Path
) -> None:
    objects = render_overlay("dev")
    deployment = find_object(objects, "Deployment", "mlflow")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    limit = _bytes(container["resources"]["limits"]["memory"])
    probe = container["startupProbe"]
    budget = probe["initialDelaySeconds"] + probe["failureThreshold"] * probe["periodSeconds"]

    port = _free_port()
    substitutes = {
        "--host=": "--host=127.0.0.1",
        "--port=": f"--port={port}",
        "--backend-store-uri=": f"--backend-store-uri=sqlite:///{tmp_path}/mlflow.db",
    }
    args = []
    for arg in container["args"]:
        prefix = next((p for p in substitutes if arg.startswith(p)), None)
        args.append(substitutes[prefix] if prefix else arg)
    assert container["command"][0] == "mlflow"
    command = [str(Path(sys.executable).parent / "mlflow"), *container["command"][1:], *args]

    env = _container_env(container, objects)
    assert set(env) >= {"MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    env.update(
        MLFLOW_S3_ENDPOINT_URL=s3_server.endpoint,
        AWS_ACCESS_KEY_ID=s3_server.access_key,
        AWS_SECRET_ACCESS_KEY=s3_server.secret_key,
        HOME=str(tmp_path),
        PATH=os.environ["PATH"],
    )

    log = (tmp_path / "mlflow.log").open("w")
    started = time.monotonic()
    server = subprocess.Popen(
        command,
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )
    tree = psutil.Process(server.pid)
    peak = 0
    ready_after = None
    try:
        base = f"http://127.0.0.1:{port}"
        while time.monotonic() - started < budget:
            peak = max(peak, _tree_rss(tree))
            if server.poll() is not None:
                log.flush()
                tail = (tmp_path / "mlflow.log").read_text()[-2000:]
                pytest.fail(f"mlflow server exited: {tail}")
            if _get(f"{base}/health") == 200:
                ready_after = time.monotonic() - started
                break
            time.sleep(0.5)
        assert ready_after is not None, f"/health did not answer within {budget} s"
        settle_until = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < settle_until:
            _get(f"{base}/api/2.0/mlflow/experiments/search?max_results=10")
            _get(f"{base}/api/2.0/mlflow/registered-models/search")
            peak = max(peak, _tree_rss(tree))
            time.sleep(0.5)
        processes = 1 + len(tree.children(recursive=True))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()

    print(
        f"\nmlflow replay: healthy after {ready_after:.1f} s (startupProbe budget {budget} s); "
        f"peak RSS of {processes} processes {peak / 2**20:.0f} MiB "
        f"(limit {container['resources']['limits']['memory']})"
    )
    assert peak < limit, f"process tree RSS {peak / 2**20:.0f} MiB >= limit {limit / 2**20:.0f}"
