"""`make image` restarts what runs the project image, and waits for it, when it is deployed.

`make image` runs with stand-ins for docker, kind and kubectl (shell scripts that record their
arguments); the kubectl stand-in knows the Deployments named in ``DEPLOYED``, and answers
``get`` of any other as kubectl does a missing one (exit 1, ``NotFound``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from mlops.settings import DEFAULT_IMAGE
from tests.conftest import render_overlay

ROOT = Path(__file__).parents[2]
STUB = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
if [ "$(basename "$0")" = kubectl ] && [ "$1" = get ]; then
  case " {deployed} " in
    *" $3 "*) echo "deployment.apps/$3" ;;
    *) echo "Error from server (NotFound): deployments.apps \\"$3\\" not found" >&2; exit 1 ;;
  esac
fi
"""


def _make_image(tmp_path: Path, deployed: list[str]) -> list[str]:
    log = tmp_path / "calls.log"
    log.touch()
    tools = {}
    for tool in ("docker", "kind", "kubectl"):
        path = tmp_path / tool
        path.write_text(STUB.format(log=log, deployed=" ".join(deployed)))
        path.chmod(0o755)
        tools[tool.upper()] = str(path)
    result = subprocess.run(
        ["make", "-C", str(ROOT), "image", *(f"{k}={v}" for k, v in tools.items())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return log.read_text().splitlines()


def _image_deployments() -> set[str]:
    return {
        o["metadata"]["name"]
        for o in render_overlay("dev")
        if o["kind"] == "Deployment"
        and any(c["image"] == DEFAULT_IMAGE for c in o["spec"]["template"]["spec"]["containers"])
    }


def test_make_image_restarts_every_deployment_of_the_image_after_loading_it(
    tmp_path: Path,
) -> None:
    names = _image_deployments()
    assert names == {"mlops-payload-sink", "web-form"}
    calls = _make_image(tmp_path, sorted(names))
    loaded = next(i for i, c in enumerate(calls) if c.startswith("kind load"))
    for name in names:
        restart = calls.index(f"kubectl rollout restart deployment/{name} -n kubeflow-user")
        status = calls.index(
            f"kubectl rollout status deployment/{name} -n kubeflow-user --timeout=300s"
        )
        assert loaded < restart < status


def test_make_image_skips_a_deployment_that_is_not_there_yet(tmp_path: Path) -> None:
    calls = _make_image(tmp_path, ["web-form"])
    assert "kubectl rollout restart deployment/web-form -n kubeflow-user" in calls
    assert not [c for c in calls if "rollout" in c and "mlops-payload-sink" in c]
