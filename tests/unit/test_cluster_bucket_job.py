"""The bucket Job's script, run as its image runs it: ``/bin/sh -ec`` with ``mc`` and no grep.

The image (quay.io/minio/mc:RELEASE.2025-08-13T08-35-41Z) is ubi-micro with ``/usr/bin/mc``
(minio/mc at that tag: Dockerfile.release); there is no grep. The script runs here on a PATH of
one directory holding a stub ``mc`` (tests/unit/mc_stub.py, modelled on mc at that tag) and
``sleep`` (coreutils, which ubi-micro ships), with the Job's env, first run and rerun.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import render_overlay

STUB = Path(__file__).with_name("mc_stub.py")
ROOT_USER = ("minio-admin", "root-password")
ENV = {
    "RW_ACCESS_KEY_ID": "mlops",
    "RW_SECRET_ACCESS_KEY": "rw-secret",
    "RO_ACCESS_KEY_ID": "kserve-reader",
    "RO_SECRET_ACCESS_KEY": "ro-secret",
}
# sh builtins and keywords the script may use besides mc (and sleep, in the wait loop).
ALLOWED_COMMANDS = {"mc", "echo", "sleep", "until", "do", "done", "if", "then", "fi", "exit"}


def _job() -> dict[str, Any]:
    (job,) = [
        o
        for o in render_overlay("dev")
        if o["kind"] == "Job" and o["metadata"]["name"] == "create-buckets"
    ]
    return dict(job)


def _script_and_shell() -> tuple[str, list[str]]:
    (container,) = _job()["spec"]["template"]["spec"]["containers"]
    (script,) = container["args"]
    return script, container["command"]


@pytest.fixture
def sandbox(tmp_path: Path) -> dict[str, Any]:
    """A PATH with only ``mc`` and ``sleep``, the policy file where the Job mounts it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mc = bin_dir / "mc"
    mc.write_text(
        f"#!{sys.executable}\nimport runpy, sys\nrunpy.run_path({str(STUB)!r}, "
        "run_name='__main__')\n"
    )
    mc.chmod(0o755)
    (bin_dir / "sleep").symlink_to(shutil.which("sleep") or "/bin/sleep")
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    policy = Path(__file__).parents[2] / "manifests/base/model-namespace"
    shutil.copy(policy / "models-read-only-policy.json", policy_dir)
    state = tmp_path / "server.json"
    state.write_text(
        json.dumps(
            {
                "root": list(ROOT_USER),
                "unreachable_attempts": 1,
                "buckets": [],
                "users": {},
                "policies": {},
                "builtin_policies": ["readwrite", "readonly"],
                "calls": [],
            }
        )
    )
    home = tmp_path / "home"  # the Job sets HOME=/tmp: mc writes ~/.mc
    home.mkdir()
    env = {
        "PATH": str(bin_dir),
        "HOME": str(home),
        "MC_STUB_STATE": str(state),
        "MINIO_ROOT_USER": ROOT_USER[0],
        "MINIO_ROOT_PASSWORD": ROOT_USER[1],
        **ENV,
    }
    return {"env": env, "state": state, "policy_dir": policy_dir}


def _run(sandbox: dict[str, Any], script: str | None = None) -> subprocess.CompletedProcess:
    job_script, shell = _script_and_shell()
    text = (script or job_script).replace("/policy/", f"{sandbox['policy_dir']}/")
    assert shell == ["/bin/sh", "-ec"]
    return subprocess.run(
        [*shell, text], env=sandbox["env"], capture_output=True, text=True, timeout=60
    )


def _server(sandbox: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(sandbox["state"].read_text()))


def test_the_sandbox_path_has_no_grep(sandbox: dict[str, Any]) -> None:
    found = subprocess.run(
        ["/bin/sh", "-c", "command -v grep"], env=sandbox["env"], capture_output=True
    )
    assert found.returncode != 0


def test_the_first_run_makes_the_buckets_users_and_policies(sandbox: dict[str, Any]) -> None:
    result = _run(sandbox)
    assert result.returncode == 0, result.stderr
    assert "waiting for MinIO at http://minio:9000" in result.stdout  # one refused alias set
    server = _server(sandbox)
    assert sorted(server["buckets"]) == ["mlflow", "models"]
    assert server["users"]["mlops"] == {"secret": "rw-secret", "policies": ["readwrite"]}
    assert server["users"]["kserve-reader"] == {
        "secret": "ro-secret",
        "policies": ["models-read-only"],
    }
    assert server["policies"]["models-read-only"]["Statement"]


def test_a_rerun_on_the_same_server_succeeds_and_changes_nothing(sandbox: dict[str, Any]) -> None:
    assert _run(sandbox).returncode == 0
    first = _server(sandbox)
    rerun = _run(sandbox)
    assert rerun.returncode == 0, rerun.stderr
    assert "not found" not in rerun.stderr
    again = _server(sandbox)
    assert {k: again[k] for k in ("buckets", "users", "policies")} == {
        k: first[k] for k in ("buckets", "users", "policies")
    }
    assert rerun.stdout.strip().endswith(
        "buckets: models, mlflow; mlops: readwrite; kserve-reader: models-read-only"
    )


def test_a_refused_attach_fails_the_job_with_mcs_message(sandbox: dict[str, Any]) -> None:
    script, _ = _script_and_shell()
    broken = script.replace("attach store readwrite", "attach store no-such-policy")
    result = _run(sandbox, broken)
    assert result.returncode == 1
    assert "Unable to make user/group policy association" in result.stderr
    assert "not found" not in result.stderr  # no missing tool on the failure path either


def test_the_script_runs_only_mc_and_shell_builtins() -> None:
    script, _ = _script_and_shell()
    commands = set()
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.wordchars += "$"
        first = True
        for token in lexer:
            if token in (";", "|", "||", "&&", "&"):
                first = True
            elif first:
                commands.add(token)
                first = False
    assert commands <= ALLOWED_COMMANDS, sorted(commands - ALLOWED_COMMANDS)


def test_the_sandbox_env_names_every_variable_the_job_sets() -> None:
    (container,) = _job()["spec"]["template"]["spec"]["containers"]
    names = {e["name"] for e in container["env"]} - {"HOME"}
    assert names == set(ENV)
    assert os.sep in {e["value"] for e in container["env"] if e["name"] == "HOME"}.pop()
