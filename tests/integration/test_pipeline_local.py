"""The whole pipeline through kfp.local: a first deploy, a canary, and a gated model.

Both branches of the ``dsl.If`` gate run through KFP's local orchestrator, not only the plain
functions, because kfp.local's condition evaluator is young (kubeflow/pipelines#13313).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlops import registry
from mlops.settings import default_tracking_uri
from mlops.store import LocalStore, sha256_file
from pipelines.local import LocalRunSummary, PipelineRunError, run_locally
from serving import local_controller


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Three runs in one state directory: first, second (canary), degraded (gated)."""
    home = tmp_path_factory.mktemp("lifecycle") / ".mlops"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_HOME", str(home))
        for name in ("MLOPS_STORE_URI", "MLFLOW_TRACKING_URI", "MLOPS_S3_ENDPOINT"):
            patch.delenv(name, raising=False)
        first = run_locally({}, home)
        after_first = local_controller.read_state("breast-cancer", home)
        second = run_locally({}, home)
        after_second = local_controller.read_state("breast-cancer", home)
        gated = run_locally({"label_noise": 0.5}, home)
        after_gated = local_controller.read_state("breast-cancer", home)
        champion = registry.storage_uri_of_alias(default_tracking_uri(), "breast-cancer",
                                                 registry.CHAMPION)
        challenger = registry.storage_uri_of_alias(default_tracking_uri(), "breast-cancer",
                                                   registry.CHALLENGER)
        # The MLflow database is lost while a model serves: the gate must refuse, not read
        # "no champion" and deploy anything above min_accuracy (issue 8 item 11).
        database = home / "mlflow.db"
        database.rename(home / "mlflow.db.saved")
        try:
            run_locally({}, home)
        except PipelineRunError as err:
            refused: PipelineRunError | None = err
        else:
            refused = None
        after_refused = local_controller.read_state("breast-cancer", home)
        (home / "mlflow.db.saved").replace(database)
    return {"refused": refused, "after_refused": after_refused,
            "home": home, "first": first, "second": second, "gated": gated,
            "after_first": after_first, "after_second": after_second,
            "after_gated": after_gated, "champion": champion, "challenger": challenger}


def _split(state: dict) -> dict[str, int]:
    return {t.model_version: t.percent for t in local_controller.traffic_targets(state)}


def test_first_run_deploys_version_1_with_all_traffic(runs: dict) -> None:
    first: LocalRunSummary = runs["first"]
    assert first.deploy and first.version == 1
    assert first.storage_uri == f"file://{runs['home'] / 'store' / 'breast-cancer' / '1'}/"
    assert "no champion" in first.reason
    assert _split(runs["after_first"]) == {"1": 100}


def test_second_run_is_evaluated_against_version_1_and_becomes_a_ten_percent_canary(
    runs: dict,
) -> None:
    second: LocalRunSummary = runs["second"]
    assert second.deploy and second.version == 2
    assert "champion_f1" in second.metrics and "vs champion" in second.reason
    assert _split(runs["after_second"]) == {"2": 10, "1": 90}
    isvc = runs["after_second"]["inferenceService"]
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert runs["challenger"] == second.storage_uri
    assert runs["champion"] == runs["first"].storage_uri


def test_every_version_carries_the_sha256_of_its_file(runs: dict) -> None:
    store = LocalStore(runs["home"] / "store")
    assert store.versions("breast-cancer") == [1, 2]
    for version in (1, 2):
        folder = runs["home"] / "store" / "breast-cancer" / str(version)
        metadata = json.loads((folder / "metadata.json").read_text())
        assert metadata["sha256"] == sha256_file(folder / "model.joblib")
        assert metadata["sklearn_version"] == "1.5.2"
        assert len(metadata["data_fingerprint"]) == 64
        assert set(metadata["metrics"]) >= {"accuracy", "f1", "roc_auc"}
        assert metadata["reference_statistics"]["rows"] == 569
        # Issue 17: the built-in's class names travel with the model; all-numeric: a tensor.
        assert metadata["classes"] == [0, 1]
        assert metadata["class_names"] == ["malignant", "benign"]
        assert metadata["input_kind"] == "tensor" and metadata["label_datatype"] == "INT64"


def test_every_run_writes_its_html_report_under_the_state_directory(runs: dict) -> None:
    for name in ("first", "second", "gated"):
        summary: LocalRunSummary = runs[name]
        assert summary.report == runs["home"] / "reports" / f"{summary.mlflow_run_id}.html"
        page = summary.report.read_text()
        assert "<th>malignant</th>" in page and "<svg" in page
    assert "decision: gated" in runs["gated"].report.read_text()


def test_degraded_model_is_gated_and_production_is_untouched(runs: dict) -> None:
    gated: LocalRunSummary = runs["gated"]
    assert not gated.deploy and gated.version is None
    assert "below min_score" in gated.reason  # issue 17: the gate floor of any metric
    assert runs["after_gated"] == runs["after_second"]
    assert LocalStore(runs["home"] / "store").versions("breast-cancer") == [1, 2]


def test_a_lost_champion_alias_while_a_model_serves_refuses_the_gate(runs: dict) -> None:
    refused = runs["refused"]
    assert refused is not None, "the run deployed without comparing against what serves"
    assert str(refused).startswith(
        "ChampionMismatchError: InferenceService 'breast-cancer' serves version 1 but MLflow "
        "has no 'champion' alias")
    assert "mlops promote breast-cancer" in str(refused)
    assert runs["after_refused"] == runs["after_gated"]
    assert LocalStore(runs["home"] / "store").versions("breast-cancer") == [1, 2]


def test_a_failing_step_reports_its_own_error_line(tmp_path: Path, mlops_home: Path) -> None:
    one_class = tmp_path / "one-class.csv"
    one_class.write_text("a,b,target\n1,2,0\n3,4,0\n")
    with pytest.raises(PipelineRunError, match="DataValidationError: label column 'target' has 1"):
        run_locally({"source": str(one_class), "min_rows": 1}, mlops_home)
    assert not (mlops_home / "store").exists()


def test_a_table_with_several_problems_reports_them_all_in_one_error(
    tmp_path: Path, mlops_home: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,target\n1,inf,0\n2,3,\n4,5,1\n")
    with pytest.raises(PipelineRunError) as caught:
        run_locally({"source": str(bad)}, mlops_home)
    assert str(caught.value).splitlines() == [
        "DataValidationError: the table has 4 problems:",
        "- column 'b' has infinite values (1 row): replace them with numbers or leave those "
        "cells empty (missing values are imputed)",
        "- label column 'target' has 1 missing value: drop those rows or fill in their class",
        "- label column 'target': class '0' (and 1 more) has 1 row; every class needs at least "
        "2 (the holdout split keeps each class on both sides): add rows of it or drop them",
        "- the table has 3 rows; min_rows is 100: add rows or lower --min-rows",
    ]
    assert not (mlops_home / "store").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--source", "missing.csv"], "error: source 'missing.csv' does not exist"),
    (["--source", "data.txt"], "error: source 'data.txt' must end in .csv or .parquet, got '.txt'"),
    (["--source", "sklearn:mnist"], "error: source 'sklearn:mnist' is not a built-in dataset"),
])
def test_bad_input_is_one_error_line_and_a_non_zero_exit(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mlops.cli", "run", *args], cwd=tmp_path, capture_output=True,
        text=True, env={"PATH": "/usr/bin:/bin", "MLOPS_HOME": str(tmp_path / ".mlops")},
        timeout=60,
    )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(message)
    assert not (tmp_path / ".mlops" / "store").exists()
