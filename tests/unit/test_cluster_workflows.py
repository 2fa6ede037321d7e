"""The GitHub workflows parse, call only make targets that exist, and do what the README says."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
WORKFLOWS = sorted((ROOT / ".github/workflows").glob("*.y*ml"))


def _load(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def _make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)\s*:(?!=)", makefile, re.MULTILINE))


def _make_calls(workflow: dict[str, Any]) -> list[str]:
    """The targets of every `make ...` in the workflow's run steps, in order."""
    targets = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            for line in step.get("run", "").splitlines():
                words = shlex.split(line, comments=True) if line.strip() else []
                if words[:1] == ["make"]:
                    targets += [w for w in words[1:] if "=" not in w and not w.startswith("-")]
    return targets


def _steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def test_both_workflows_exist() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yaml", "e2e-kind.yaml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_the_workflow_parses_and_every_job_has_a_timeout(path: Path) -> None:
    workflow = _load(path)
    assert workflow["name"]
    assert True in workflow or "on" in workflow  # YAML 1.1 reads the key `on` as True
    for name, job in workflow["jobs"].items():
        assert job["runs-on"], name
        assert 0 < job["timeout-minutes"] <= 180, name
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), step


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_the_workflow_names_only_make_targets_that_exist(path: Path) -> None:
    calls = _make_calls(_load(path))
    assert calls, f"{path.name} runs no make target"
    missing = sorted(set(calls) - _make_targets())
    assert not missing, f"{path.name} calls make targets the Makefile lacks: {missing}"


# Each action's commit, read from the stored copy of its repository at the tag (the fetch tool's
# mirror, `git rev-parse TAG^{commit}`): actions/checkout v5.1.0 (also tag v5),
# actions/setup-python v5.6.0 (also v5), helm/kind-action v1.14.0, actions/upload-artifact
# v4.6.2 (also v4). A tag can be moved; a commit SHA cannot.
PINNED_ACTIONS = {
    "actions/checkout": ("fbc6f3992d24b796d5a048ff273f7fcc4a7b6c09", "v5.1.0"),
    "actions/setup-python": ("a26af69be951a213d495a4c3e4e4022e16d87065", "v5.6.0"),
    "helm/kind-action": ("ef37e7f390d99f746eb8b610417061a60e82a6cc", "v1.14.0"),
    "actions/upload-artifact": ("ea165f8d65b6e75b540449e92b4886f43607fa02", "v4.6.2"),
}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_full_commit_sha_with_its_version_beside_it(
    path: Path,
) -> None:
    uses = re.findall(r"^\s*(?:- )?uses: (\S+)(.*)$", path.read_text(), re.MULTILINE)
    assert uses
    for reference, comment in uses:
        action, _, sha = reference.partition("@")
        assert re.fullmatch(r"[0-9a-f]{40}", sha), f"{reference}: not a full commit SHA"
        assert (sha, comment.strip()) == (
            PINNED_ACTIONS[action][0],
            f"# {PINNED_ACTIONS[action][1]}",
        ), f"{reference}{comment}: not the commit recorded for {action}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_no_checkout_keeps_the_token_in_the_working_tree(path: Path) -> None:
    checkouts = [
        s for s in _steps(_load(path)) if s.get("uses", "").startswith("actions/checkout@")
    ]
    assert checkouts
    for step in checkouts:
        assert step.get("with", {}).get("persist-credentials") is False, path.name


def test_make_lint_runs_zizmor_offline_and_the_workflows_are_clean() -> None:
    import subprocess
    import sys

    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^lint:.*\n((?:\t.*\n?)+)", makefile, re.MULTILINE).group(1)
    assert "$(BIN)/zizmor --offline .github/workflows" in recipe
    zizmor = Path(sys.executable).with_name("zizmor")
    assert zizmor.exists(), "zizmor missing: `make setup` installs it (dev extra)"
    result = subprocess.run(
        [str(zizmor), "--offline", "--no-progress", str(ROOT / ".github/workflows")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_lints_tests_and_runs_the_pipeline_locally_on_every_push_and_pull_request() -> None:
    workflow = _load(ROOT / ".github/workflows/ci.yaml")
    triggers = workflow.get(True, workflow.get("on"))
    assert "push" in triggers and "pull_request" in triggers
    assert _make_calls(workflow) == ["lint", "test", "run"]


def test_e2e_creates_kind_with_a_maintained_action_then_runs_the_cluster_path() -> None:
    workflow = _load(ROOT / ".github/workflows/e2e-kind.yaml")
    uses = [s["uses"] for s in _steps(workflow) if "uses" in s]
    assert any(u.startswith("helm/kind-action@") for u in uses)
    assert _make_calls(workflow) == ["setup", "kind-up", "image", "submit", "e2e"]


def test_e2e_collects_logs_and_descriptions_when_it_fails() -> None:
    workflow = _load(ROOT / ".github/workflows/e2e-kind.yaml")
    on_failure = [s for s in _steps(workflow) if "failure()" in str(s.get("if", ""))]
    script = "\n".join(s.get("run", "") for s in on_failure)
    assert "kubectl describe" in script and "kubectl logs" in script and "events" in script
    assert any(s.get("uses", "").startswith("actions/upload-artifact@") for s in on_failure)


def test_ci_run_calls_the_readmes_test_command_which_leaves_out_e2e() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.findall(r"```bash\n(make run.*?)```", readme, re.DOTALL)[0]  # the top one
    documented = [line.split("#")[0].strip() for line in block.splitlines() if "make test" in line]
    ci_run = (ROOT / ".ci/run").read_text().splitlines()
    assert documented == ["make test"] and "make test" in ci_run
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^test:.*\n((?:\t.*\n?)+)", makefile, re.MULTILINE).group(1)
    assert '-m "not e2e"' in recipe
