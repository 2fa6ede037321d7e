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
