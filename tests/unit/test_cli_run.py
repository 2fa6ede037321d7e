"""`mlops run`'s options and exit codes (issue 17): the gate metric, the old spelling, exit 5.

The pipeline itself is replaced by a function returning a summary: the run through kfp.local is
tests/integration/test_your_own_data.py's; here only the command's own work is under test.
"""

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import pipelines.local
from mlops.cli import main
from pipelines.local import LocalRunSummary


@pytest.fixture
def last_arguments(monkeypatch: pytest.MonkeyPatch, mlops_home: Path) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def gated_run(arguments: dict[str, Any], state_dir: Path, **_: Any) -> LocalRunSummary:
        seen.update(arguments)
        return LocalRunSummary(
            deploy=False, reason="accuracy 0.5000 is below min_score 0.7000",
            metrics={"accuracy": 0.5, "baseline_balanced_accuracy": 0.5}, mlflow_run_id="r1",
            log_file=state_dir / "logs/last-run.log", report=state_dir / "reports/r1.html",
        )

    monkeypatch.setattr(pipelines.local, "run_locally", gated_run)
    return seen


def test_a_gated_run_exits_5_and_prints_its_report(last_arguments: dict, mlops_home: Path) -> None:
    result = CliRunner().invoke(main, ["run", "--gate-metric", "balanced_accuracy"])
    assert result.exit_code == 5, result.output
    assert "decision: gated: accuracy 0.5000 is below min_score 0.7000" in result.output
    assert f"report: {mlops_home / 'reports/r1.html'}" in result.output
    assert "  always the majority class: balanced_accuracy 0.5000" in result.output
    assert "baseline_" not in result.output
    assert last_arguments["gate_metric"] == "balanced_accuracy"
    assert last_arguments["hyperparameters"] == {}  # the estimator's own defaults


def test_the_old_min_accuracy_option_sets_the_gate_floor(last_arguments: dict) -> None:
    CliRunner().invoke(main, ["run", "--min-accuracy", "0.7"])
    assert last_arguments["min_score"] == 0.7 and "min_accuracy" not in last_arguments


def test_run_help_documents_the_exit_codes_and_each_estimator_s_defaults() -> None:
    text = " ".join(CliRunner().invoke(main, ["run", "--help"]).output.split())
    assert "5 the gate refused the model" in text and "1 an error" in text
    assert "4 its rollout stopped" in text  # mlops rollout's own 4, passed through
    assert 'random_forest {"n_estimators": 100}' in text
    assert "[accuracy|balanced_accuracy|f1_macro|roc_auc]" in text


def test_an_unknown_gate_metric_is_refused_before_the_run(last_arguments: dict) -> None:
    result = CliRunner().invoke(main, ["run", "--gate-metric", "precision"])
    assert result.exit_code == 2 and "'precision' is not one of" in result.output
    assert not last_arguments
