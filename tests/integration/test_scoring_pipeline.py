"""`mlops score` end to end: the scoring pipeline through kfp.local, to a file and to S3.

One training run makes version 1 the champion; the scoring runs then go through KFP's local
orchestrator with the real load, score and write steps.
"""

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from mlops.cli import main
from mlops.scoring import load_model
from pipelines.local import run_locally
from tests.integration.s3_server import S3Server


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state directory whose champion is version 1 (one `mlops run`)."""
    home = tmp_path_factory.mktemp("scoring") / ".mlops"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_HOME", str(home))
        for name in ("MLOPS_STORE_URI", "MLFLOW_TRACKING_URI", "MLOPS_S3_ENDPOINT"):
            patch.delenv(name, raising=False)
        assert run_locally({}, home).version == 1
    return home


@pytest.fixture
def env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLOPS_HOME", str(home))
    for name in ("MLOPS_STORE_URI", "MLFLOW_TRACKING_URI", "MLOPS_S3_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture(scope="module")
def cases(breast_cancer: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV of 1,200 cases with an id column, no label."""
    rows = breast_cancer.drop(columns=["target"]).sample(1200, replace=True, random_state=1)
    rows.insert(0, "case_id", [f"c{i:05d}" for i in range(1200)])
    path = tmp_path_factory.mktemp("input") / "cases.csv"
    rows.to_csv(path, index=False)
    return path


def _expected(home: Path, cases: Path, tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    store = home / "store" / "breast-cancer" / "1"
    model, metadata, _ = load_model(f"file://{store}/", tmp_path / "model")
    features = pd.read_csv(cases)[metadata["feature_names"]].to_numpy(dtype=float)
    return model.predict(features), model.predict_proba(features)


def test_the_champion_scores_a_csv_in_chunks_into_parquet(
    env: Path, cases: Path, tmp_path: Path
) -> None:
    output = tmp_path / "predictions.parquet"
    result = CliRunner().invoke(main, [
        "score", str(cases), "--output", str(output), "--id-column", "case_id",
        "--chunk-rows", "500",
    ])
    assert result.exit_code == 0, result.output
    assert f"scored 1200 rows with breast-cancer version 1: {output}" in result.output
    out = pd.read_parquet(output)
    assert list(out.columns) == [
        "case_id", "predicted_class", "probability_0", "probability_1", "model_version"
    ]
    assert out["case_id"].tolist() == pd.read_csv(cases)["case_id"].tolist()
    classes, proba = _expected(env, cases, tmp_path)
    assert (out["predicted_class"].to_numpy() == classes).all()
    np.testing.assert_allclose(out[["probability_0", "probability_1"]].to_numpy(), proba)
    assert (out["model_version"] == 1).all()
    # The steps' artifacts (a Parquet copy of the input) do not pile up in the state directory.
    assert not list(env.glob("scoring-*"))


def test_a_nan_stops_the_run_with_the_column_and_row_and_writes_nothing(
    env: Path, cases: Path, tmp_path: Path
) -> None:
    rows = pd.read_csv(cases)
    rows.loc[876, "worst symmetry"] = np.nan
    bad = tmp_path / "bad.csv"
    rows.to_csv(bad, index=False)
    output = tmp_path / "predictions.csv"
    result = CliRunner().invoke(main, [
        "score", str(bad), "--output", str(output), "--version", "1", "--chunk-rows", "300",
    ])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        "error: ScoringError: column 'worst symmetry', row 877: the value is missing "
        "(NaN or empty); every feature needs a finite number (rows count from 1 after the header)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_a_chosen_version_scores_into_a_new_s3_object_never_an_existing_one(
    env: Path, cases: Path, tmp_path: Path, s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from minio import Minio

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    output = "s3://models/predictions/cases.csv"
    command = ["score", str(cases), "--output", output, "--version", "1"]
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 0, result.output
    client = Minio(s3_server.endpoint.removeprefix("http://"), s3_server.access_key,
                   s3_server.secret_key, secure=False, region="us-east-1")
    body = client.get_object("models", "predictions/cases.csv").read()
    out = pd.read_csv(io.BytesIO(body))
    classes, proba = _expected(env, cases, tmp_path)
    assert out["row"].tolist() == list(range(1200))
    assert (out["predicted_class"].to_numpy() == classes).all()
    np.testing.assert_allclose(out[["probability_0", "probability_1"]].to_numpy(), proba)

    again = CliRunner().invoke(main, command)
    assert again.exit_code == 1
    assert again.output == (
        f"error: output '{output}' exists: predictions are never overwritten; "
        "choose another name\n"
    )
    assert client.get_object("models", "predictions/cases.csv").read() == body
