"""Offline checks of the Dockerfile: the one project image the components name by default."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[2]
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make ", "apt-get install")


def _stages() -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    return re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]


def test_both_stages_start_from_a_slim_python_that_matches_the_project() -> None:
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.MULTILINE)
    assert base and re.fullmatch(r"python:3\.11-slim(-\w+)?", base.group(1))
    assert 'requires-python = ">=3.11,<3.12"' in (ROOT / "pyproject.toml").read_text()
    assert all(stage.startswith("${PYTHON_IMAGE}") for stage in _stages())


def test_dependencies_are_installed_pinned_by_constraints_in_the_build_stage() -> None:
    build, final = _stages()
    installs = [line for line in build.splitlines() if "pip install" in line]
    assert installs and all("-c constraints.txt" in line for line in installs)
    assert "pip install" not in final


def test_the_final_stage_runs_as_a_non_root_user_without_build_tools() -> None:
    final = _stages()[-1]
    user = re.findall(r"^USER (\S+)", final, re.MULTILINE)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert not [tool for tool in BUILD_TOOLS if tool in final]
    assert "COPY --from=build /opt/venv /opt/venv" in final


def test_the_build_context_leaves_out_state_and_the_virtualenv() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[0 if ignore[0] == "*" else 1 :][0] == "*" or "*" in ignore
    for needed in ("pyproject.toml", "constraints.txt", "mlops/", "components/", "pipelines/"):
        assert f"!{needed}" in ignore
    assert "!.venv/" not in ignore and "!.mlops/" not in ignore
