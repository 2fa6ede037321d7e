"""Offline checks of kind-config.yaml and the Makefile's cluster targets."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[2]
# KServe needs Kubernetes 1.32 or newer (kserve.github.io/website, Quickstart Guide).
KSERVE_MIN_KUBERNETES = (1, 32)
# kind releases and the node image each was released with (kubernetes-sigs/kind
# pkg/apis/config/defaults/image.go at the tag): a node image is supported with its own release.
KIND_NODE_IMAGES = {
    "v0.30.0": "kindest/node:v1.34.0@sha256:"
    "7416a61b42b1662ca6ca89f02028ac133a309a2a30ba309614e8ec94d976dc5a",
}
CLUSTER_TARGETS = ("kind-up", "image", "submit", "e2e", "kind-down")


def _config() -> dict:
    return dict(yaml.safe_load((ROOT / "kind-config.yaml").read_text()))


def _makefile() -> str:
    return (ROOT / "Makefile").read_text()


def _variable(name: str) -> str:
    found = re.search(rf"^{name}\s*\?=\s*(\S+)", _makefile(), re.MULTILINE)
    assert found, f"Makefile has no `{name} ?=`"
    return found.group(1)


def test_the_node_image_is_pinned_by_digest_to_a_kubernetes_kserve_supports() -> None:
    (node,) = _config()["nodes"]
    found = re.fullmatch(r"kindest/node:v(\d+)\.(\d+)\.(\d+)@sha256:[0-9a-f]{64}", node["image"])
    assert found, f"{node['image']} is not kindest/node:vX.Y.Z@sha256:<digest>"
    assert (int(found.group(1)), int(found.group(2))) >= KSERVE_MIN_KUBERNETES


def test_the_node_image_belongs_to_the_kind_release_ci_uses() -> None:
    (node,) = _config()["nodes"]
    workflow = yaml.safe_load((ROOT / ".github/workflows/e2e-kind.yaml").read_text())
    steps = [s for s in workflow["jobs"]["e2e"]["steps"] if "kind-action" in s.get("uses", "")]
    (step,) = steps
    assert KIND_NODE_IMAGES[step["with"]["version"]] == node["image"]
    assert step["with"]["config"] == "kind-config.yaml"
    assert step["with"]["cluster_name"] in ("${{ env.CLUSTER }}", _variable("CLUSTER"))


def test_the_ingress_port_mapping_matches_the_node_port_kind_up_pins() -> None:
    (node,) = _config()["nodes"]
    (mapping,) = node["extraPortMappings"]
    assert mapping["containerPort"] == int(
        re.search(r"^INGRESS_NODE_PORT\s*:=\s*(\d+)", _makefile(), re.MULTILINE).group(1)
    )
    assert mapping["hostPort"] == 8081 and mapping["listenAddress"] == "127.0.0.1"
    assert _config()["name"] == _variable("CLUSTER")


def test_kind_up_installs_the_pinned_releases_with_their_documented_steps() -> None:
    makefile = _makefile()
    assert _variable("KSERVE_VERSION") == "v0.20.0"
    assert _variable("PIPELINE_VERSION") == "2.17.0"
    assert "kserve-knative-mode-full-install-with-manifests.sh" in _variable("KSERVE_INSTALLER")
    assert "cluster-scoped-resources?ref=$(PIPELINE_VERSION)" in makefile
    assert "crd/applications.app.k8s.io" in makefile
    assert "env/platform-agnostic?ref=$(PIPELINE_VERSION)" in makefile
    assert "$(KUBECTL) apply -k manifests/overlays/$(OVERLAY)" in makefile


def test_the_pipeline_version_matches_the_kfp_sdk_pin() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    sdk = re.search(r'"kfp==(\d+\.\d+)\.\d+"', pyproject)
    assert sdk, "pyproject.toml pins kfp==X.Y.Z"
    assert _variable("PIPELINE_VERSION").startswith(sdk.group(1) + ".")


def test_every_cluster_target_exists_says_what_it_does_and_dry_runs() -> None:
    makefile = _makefile()
    for target in CLUSTER_TARGETS:
        recipe = re.search(rf"^{target}:.*\n((?:\t.*\n?)+)", makefile, re.MULTILINE)
        assert recipe, f"make target {target} is missing"
        assert "@echo" in recipe.group(1), f"make {target} does not say what it does"
    result = subprocess.run(
        ["make", "-n", "-C", str(ROOT), *CLUSTER_TARGETS],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_submit_port_forwards_to_kfp_and_the_image_is_the_components_default() -> None:
    from mlops.settings import DEFAULT_IMAGE

    submit = re.search(r"^submit:.*\n((?:\t.*\n?)+)", _makefile(), re.MULTILINE).group(1)
    assert "port-forward -n kubeflow svc/ml-pipeline-ui" in submit
    assert "mlops submit --host http://localhost:$(KFP_PORT)" in submit
    assert _variable("IMAGE") == DEFAULT_IMAGE


def _dry_run(*targets: str) -> str:
    result = subprocess.run(
        ["make", "-n", "-B", "-C", str(ROOT), *targets],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_test_leaves_out_e2e_and_replays_the_pinned_kserves_storage_initializer() -> None:
    commands = _dry_run("test")
    (pytest_line,) = [line for line in commands.splitlines() if "bin/pytest" in line]
    assert '-m "not e2e"' in pytest_line  # a reachable kube-context gets no pipeline runs
    assert "MLOPS_KSERVE_STORAGE_PYTHON=" in pytest_line
    storage_python = pytest_line.split("MLOPS_KSERVE_STORAGE_PYTHON=", 1)[1].split()[0]
    version = _variable("KSERVE_VERSION").removeprefix("v")
    assert f'"kserve-storage=={version}"' in commands
    assert storage_python.startswith(str(ROOT)) and f"kserve-storage-v{version}" in storage_python


def test_make_e2e_requires_the_cluster() -> None:
    (pytest_line,) = [line for line in _dry_run("e2e").splitlines() if "MLOPS_E2E_" in line]
    assert "MLOPS_E2E_REQUIRED=1" in pytest_line


def _e2e_without_a_cluster(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    import os
    import sys

    return subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "e2e", "tests/e2e", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env={**os.environ, "KUBECONFIG": str(tmp_path / "no-such-kubeconfig"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_e2e_tests_fail_with_the_reason_when_required_and_skip_in_a_plain_run(
    tmp_path: Path,
) -> None:
    required = _e2e_without_a_cluster(tmp_path, MLOPS_E2E_REQUIRED="1")
    assert required.returncode != 0
    assert "make e2e needs the cluster: no cluster reachable" in required.stdout
    assert " passed" not in required.stdout and " skipped" not in required.stdout
    plain = _e2e_without_a_cluster(tmp_path, MLOPS_E2E_REQUIRED="")
    assert plain.returncode == 0 and " skipped" in plain.stdout, plain.stdout[-2000:]


def test_image_builds_without_provenance_and_falls_back_to_an_image_archive() -> None:
    image = re.search(r"^image:.*\n((?:\t.*\n?)+)", _makefile(), re.MULTILINE).group(1)
    assert "build --provenance=false" in image
    assert "$(KIND) load docker-image" in image
    assert "save -o" in image and "$(KIND) load image-archive" in image


def test_kind_up_installs_istio_with_kserve_cis_minimal_requests() -> None:
    commands = _dry_run("kind-up").replace("\\\n", " ")
    (install,) = [line for line in commands.splitlines() if "ISTIOD_EXTRA_ARGS=" in line]
    assert "bash ./install.sh" in install  # the installer reads both from its environment
    for name in ("ISTIOD_EXTRA_ARGS", "ISTIO_GATEWAY_EXTRA_ARGS"):
        args = re.search(rf'{name}="([^"]*)"', install).group(1)
        assert "--set resources.requests.cpu=5m" in args
        assert "--set resources.requests.memory=32Mi" in args
