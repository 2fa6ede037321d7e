"""scikit-learn must be the version KServe's sklearn runtime loads models with."""

import re
import tomllib
from pathlib import Path

import sklearn
from packaging.specifiers import SpecifierSet

from serving.inference_service import SKLEARN_RUNTIME

ROOT = Path(__file__).parents[2]
# kserve-sklearnserver's pyproject pins scikit-learn ~=1.5.1 (KServe v0.15 to v0.20).
KSERVE_SKLEARNSERVER_PIN = SpecifierSet("~=1.5.1")


def _pinned(requirement_lines: list[str], name: str) -> str:
    for line in requirement_lines:
        match = re.fullmatch(rf"{name}==([\w.]+)", line.strip())
        if match:
            return match.group(1)
    raise AssertionError(f"{name} is not pinned with ==")


def test_installed_sklearn_is_what_the_serving_runtime_loads() -> None:
    assert sklearn.__version__ in KSERVE_SKLEARNSERVER_PIN


def test_project_and_constraints_pin_the_same_sklearn() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    constraints = (ROOT / "constraints.txt").read_text().splitlines()
    assert _pinned(project["dependencies"], "scikit-learn") == sklearn.__version__
    assert _pinned(constraints, "scikit-learn") == sklearn.__version__


def test_inference_service_names_the_runtime_that_matches_the_pin() -> None:
    # With protocolVersion v2 and no runtime, KServe picks MLServer (scikit-learn 1.6.1).
    assert SKLEARN_RUNTIME == "kserve-sklearnserver"


def test_the_runtime_replay_venv_pins_what_kserve_sklearnserver_loads_models_with() -> None:
    makefile = (ROOT / "Makefile").read_text()
    (sklearn_pin,) = re.findall(r"^RUNTIME_SKLEARN \?= (\S+)$", makefile, re.M)
    (kserve_version,) = re.findall(r"^KSERVE_VERSION \?= v(\S+)$", makefile, re.M)
    assert sklearn_pin == sklearn.__version__ and sklearn_pin in KSERVE_SKLEARNSERVER_PIN
    assert kserve_version == "0.20.0"  # the cluster's KServe, not the project's SDK (0.21.0)
    assert '"kserve==$(KSERVE_VERSION:v%=%)"' in makefile
    assert "MLOPS_KSERVE_RUNTIME_PYTHON=$(abspath $(RUNTIME_VENV))/bin/python" in makefile
    assert re.search(r"^test: .*\$\(RUNTIME_STAMP\)", makefile, re.M)
