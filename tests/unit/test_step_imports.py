"""What each pipeline step imports: a step is a fresh interpreter, it pays every import again.

The modules a step's body imports are imported in a fresh ``python``, exactly as the step
writes them (read from the component's own source), and the heavy libraries that step has no
use for must stay out. No timing: this guards the cause, not a figure.
"""

import ast
import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import components

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("mlflow", "kserve", "kubernetes", "sklearn", "pandas")

# Step -> the heavy libraries it uses (imported at the top of its body or of the modules it
# imports). Anything else from HEAVY is imported only where it is needed.
NEEDS = {
    "check_parameters": set(),
    "load_data": set(),  # pandas and sklearn.datasets when it loads, not at import
    "validate_data": {"pandas"},
    "train": {"pandas", "sklearn"},
    "evaluate": {"pandas", "sklearn"},  # mlflow when it logs; kserve/kubernetes never locally
    "upload_model": set(),  # and none when it runs (test_upload_model.py)
    "deploy_model": set(),  # MLflow and kserve's typed classes when it runs, not at import
}


def _imported_by(code: str) -> set[str]:
    """The HEAVY modules a fresh interpreter holds after running ``code``."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def _body_imports(step: str) -> str:
    """The import statements of the component's function body, as the step runs them."""
    func = getattr(components, step).python_func
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    return "\n".join(
        ast.unparse(node) for node in body if isinstance(node, ast.Import | ast.ImportFrom)
    )


@pytest.mark.parametrize("step", sorted(NEEDS))
def test_a_step_imports_only_the_heavy_libraries_it_uses(step: str) -> None:
    assert _imported_by(_body_imports(step)) <= NEEDS[step]


def test_the_pre_flight_checks_import_no_heavy_library() -> None:
    # Hyperparameters included: they are checked against mlops.estimators' table of
    # scikit-learn's defaults, not against scikit-learn itself (an import of over a second, paid
    # by `mlops run` and by the pipeline's first step).
    code = textwrap.dedent(
        """
        import tempfile
        from pathlib import Path
        from pipelines.local import local_arguments, preflight
        home = Path(tempfile.mkdtemp())
        arguments = {"estimator": "random_forest", "hyperparameters": {"n_estimators": 10}}
        preflight(local_arguments(arguments, home), home)
        """
    )
    assert _imported_by(code) == set()
