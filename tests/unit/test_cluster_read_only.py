"""The payload sink and the web form serve on a read-only root filesystem, as they are deployed.

Each process is started as its rendered Deployment (manifests/overlays/dev) starts it: its
command and args, its env (Secret and field references resolved, ``$(VAR)`` expanded as the
kubelet expands them), the image's env (Dockerfile, final stage: ``HOME=/home/mlops``,
``PYTHONDONTWRITEBYTECODE=1``), from a read-only copy of the code, with a read-only HOME and
working directory, and only the Deployment's emptyDir mounts writable (read_only_launcher.py
refuses every other write with EROFS). Only the port and the bind address are changed: a free
port on 127.0.0.1.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import render_overlay

ROOT = Path(__file__).parents[2]
LAUNCHER = Path(__file__).with_name("read_only_launcher.py")
# The Dockerfile's final stage sets these for every container of the image.
IMAGE_ENV = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "HOME": "/home/mlops"}
CODE = ("mlops", "serving", "components", "pipelines")
FIELDS = {
    "metadata.namespace": "kubeflow-user",
    "metadata.name": "pod-0",
    "status.podIP": "127.0.0.1",
}


def expand(text: str, env: dict[str, str]) -> str:
    """``$(VAR)`` replaced by its value when defined, ``$$`` by ``$``, as the kubelet does.

    kubernetes third_party/forked/golang/expansion/expand.go: an undefined ``$(VAR)`` stays.
    """
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _deployment(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == name]
    return dict(found)


def _container_env(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    env = dict(IMAGE_ENV)
    for item in container.get("env", []):
        source = item.get("valueFrom")
        if source is None:
            env[item["name"]] = expand(str(item.get("value", "")), env)
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[item["name"]] = base64.b64decode(secrets[ref["name"]]["data"][ref["key"]]).decode()
        else:
            env[item["name"]] = FIELDS[source["fieldRef"]["fieldPath"]]
    return env


def _read_only_copy(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    for package in CODE:
        skip = shutil.ignore_patterns("__pycache__")
        shutil.copytree(ROOT / package, code / package, ignore=skip)
    for path in [code, *code.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return code


def start_as_deployed(name: str, tmp_path: Path) -> tuple[subprocess.Popen, int, Path]:
    """Start Deployment ``name``'s container here; returns (process, port, refused-writes log)."""
    objects = render_overlay("dev")
    deployment = _deployment(objects, name)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = _container_env(objects, container)
    port = _free_port()
    # Where the Deployment mounts an emptyDir, a writable directory; elsewhere nothing is.
    empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    mounts = {}
    for mount in container.get("volumeMounts", []):
        if mount["name"] in empty_dirs:
            host = tmp_path / "empty-dirs" / mount["name"]
            host.mkdir(parents=True)
            mounts[mount["mountPath"]] = str(host)
    for key, value in list(env.items()):
        for inside, host in mounts.items():
            if value == inside or value.startswith(inside + "/"):
                env[key] = host + value[len(inside) :]
    if "/tmp" in mounts:
        env["TMPDIR"] = mounts["/tmp"]  # Python's tempfile then writes where the pod's /tmp is
    else:
        env["TMPDIR"] = "/nonexistent"
    home = tmp_path / "home"  # the image's HOME and working directory, read-only
    home.mkdir()
    home.chmod(0o555)
    env["HOME"] = str(home)
    if "PORT" in env:
        env["PORT"] = str(port)
    for key in [k for k in env if k.endswith("HOST")]:
        env[key] = "127.0.0.1"
    args = []
    for arg in container.get("args", []):
        arg = expand(arg, env)
        if arg.startswith("--port="):
            arg = f"--port={port}"
        elif arg.startswith("--host="):
            arg = "--host=127.0.0.1"
        args.append(arg)
    command = container["command"]
    assert command[:2] == ["python", "-m"], command
    code = _read_only_copy(tmp_path)
    refused = tmp_path / "refused-writes.log"
    refused.touch()
    env.update(
        PATH=os.environ["PATH"],
        PYTHONPATH=str(code),
        RO_WRITABLE=os.pathsep.join(mounts.values()) or "/nonexistent",
        RO_REFUSED_LOG=str(refused),
    )
    process = subprocess.Popen(
        [sys.executable, str(LAUNCHER), command[2], *command[3:], *args],
        cwd=home,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, port, refused


def _wait_serving(process: subprocess.Popen, url: str, refused: Path) -> httpx.Response:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            pytest.fail(
                f"exited {process.returncode}; refused writes: {refused.read_text()!r}\n{output}"
            )
        try:
            return httpx.get(url, timeout=2, headers={"accept": "*/*"})
        except httpx.TransportError:
            time.sleep(0.3)
    pytest.fail(f"{url} did not answer within 90 s")


@pytest.fixture
def stop() -> Any:
    started: list[subprocess.Popen] = []
    yield started.append
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def test_the_payload_sink_serves_with_a_read_only_root_filesystem(
    tmp_path: Path, stop: Any
) -> None:
    process, port, refused = start_as_deployed("mlops-payload-sink", tmp_path)
    stop(process)
    health = _wait_serving(process, f"http://127.0.0.1:{port}/healthz", refused)
    assert health.status_code == 200
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert metrics.status_code == 200 and "mlops_" in metrics.text
    assert process.poll() is None


def test_the_web_form_serves_with_a_read_only_root_filesystem(tmp_path: Path, stop: Any) -> None:
    process, port, refused = start_as_deployed("web-form", tmp_path)
    stop(process)
    alive = _wait_serving(process, f"http://127.0.0.1:{port}/", refused)
    assert alive.status_code == 200 and alive.json() == {"status": "alive"}
    page = httpx.get(f"http://127.0.0.1:{port}/", headers={"accept": "text/html"}, timeout=5)
    assert page.status_code == 200 and "<form" in page.text
    assert process.poll() is None


def test_the_launcher_refuses_a_write_outside_the_empty_dirs(tmp_path: Path) -> None:
    writable = tmp_path / "tmp"
    writable.mkdir()
    refused = tmp_path / "refused.log"
    refused.touch()
    script = tmp_path / "writer"
    script.mkdir()
    (script / "writer.py").write_text(
        "import pathlib, sys\n"
        f"pathlib.Path({str(writable)!r}, 'ok').write_text('x')\n"
        f"pathlib.Path({str(tmp_path)!r}, 'not-ok').write_text('x')\n"
    )
    result = subprocess.run(
        [sys.executable, str(LAUNCHER), "writer"],
        env={**os.environ, "PYTHONPATH": str(script), "RO_WRITABLE": str(writable),
             "RO_REFUSED_LOG": str(refused)},
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert result.returncode != 0 and "Read-only file system" in result.stderr
    assert (writable / "ok").exists() and not (tmp_path / "not-ok").exists()
    assert refused.read_text() == f"{tmp_path / 'not-ok'}\n"
