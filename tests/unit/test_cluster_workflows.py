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


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_version(path: Path) -> None:
    for step in _steps(_load(path)):
        if "uses" in step:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+(\.\d+){0,2}", step["uses"]), step["uses"]


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
