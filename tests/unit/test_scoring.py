"""Batch scoring's plain functions: chunked scoring, one clear error per bad input, no half file."""

from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from mlops.cli import main
from mlops.data import write_table
from mlops.scoring import (
    ScoringError,
    check_output,
    load_model,
    output_format,
    score_table,
)
from mlops.store import LocalStore, StoreError


@pytest.fixture
def features(breast_cancer: pd.DataFrame) -> pd.DataFrame:
    return breast_cancer.drop(columns=["target"]).head(200).reset_index(drop=True)


@pytest.fixture
def model(tiny_model):  # noqa: ANN001, ANN201
    return tiny_model[0]


def _table(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_parquet(path, index=False)
    return path


def _score(model, frame: pd.DataFrame, tmp_path: Path, output: str = "out.parquet",  # noqa: ANN001
           **options) -> Path:
    table = _table(frame, tmp_path / "rows.parquet")
    names = [c for c in frame.columns if c != "case_id"]
    score_table(table, model, names, 3, tmp_path / output, **options)
    return tmp_path / output


def test_each_row_gets_its_row_number_class_probabilities_and_version(
    model, features: pd.DataFrame, tmp_path: Path  # noqa: ANN001
) -> None:
    out = pd.read_parquet(_score(model, features, tmp_path))
    assert list(out.columns) == [
        "row", "predicted_class", "probability_0", "probability_1", "model_version"
    ]
    assert out["row"].tolist() == list(range(200))
    assert (out["predicted_class"] == model.predict(features.to_numpy())).all()
    proba = model.predict_proba(features.to_numpy())
    np.testing.assert_allclose(out[["probability_0", "probability_1"]].to_numpy(), proba)
    assert (out["model_version"] == 3).all()


def test_chunks_give_the_same_predictions_as_one_pass_and_csv_follows_the_suffix(
    model, features: pd.DataFrame, tmp_path: Path  # noqa: ANN001
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole = pd.read_parquet(_score(model, features, tmp_path / "a"))
    chunked = pd.read_csv(_score(model, features, tmp_path / "b", "out.csv", chunk_rows=7))
    assert len(chunked) == 200
    pd.testing.assert_frame_equal(whole, chunked, check_dtype=False)


def test_an_id_column_is_copied_beside_each_prediction(
    model, features: pd.DataFrame, tmp_path: Path  # noqa: ANN001
) -> None:
    frame = features.assign(case_id=[f"case-{i}" for i in range(200)])
    out = pd.read_parquet(_score(model, frame, tmp_path, id_column="case_id", chunk_rows=64))
    assert out.columns[0] == "case_id"
    assert out["case_id"].tolist() == frame["case_id"].tolist()


def _no_files_but(directory: Path, *names: str) -> None:
    assert sorted(p.name for p in directory.iterdir()) == sorted(names)


def test_a_missing_column_is_one_error_naming_it_and_nothing_is_written(
    model, features: pd.DataFrame, tmp_path: Path  # noqa: ANN001
) -> None:
    table = _table(features.drop(columns=["mean radius"]), tmp_path / "rows.parquet")
    with pytest.raises(ScoringError, match="column 'mean radius' is missing from the input"):
        score_table(table, model, list(features.columns), 1, tmp_path / "out.csv")
    _no_files_but(tmp_path, "rows.parquet")


def test_a_nan_in_a_later_chunk_names_column_and_row_and_nothing_is_written(
    model, features: pd.DataFrame, tmp_path: Path  # noqa: ANN001
) -> None:
    features.loc[150, "mean texture"] = np.nan
    features.loc[170, "mean radius"] = np.nan
    with pytest.raises(
        ScoringError, match=r"column 'mean texture', row 151: the value is missing \(NaN"
    ):
        _score(model, features, tmp_path, "out.csv", chunk_rows=50)
    _no_files_but(tmp_path, "rows.parquet")


def test_an_infinite_value_names_column_and_row(
    model, features: pd.DataFrame, tmp_path: Path  # noqa: ANN001
) -> None:
    features.loc[3, "worst area"] = np.inf
    with pytest.raises(ScoringError, match="column 'worst area', row 4: the value is infinite"):
        _score(model, features, tmp_path)


def test_text_in_a_numeric_column_names_column_row_and_value(
    model, features: pd.DataFrame, tmp_path: Path  # noqa: ANN001
) -> None:
    text = features.astype({"mean area": str})
    text.loc[42, "mean area"] = "n/a"
    with pytest.raises(ScoringError, match="column 'mean area', row 43: 'n/a' is not a number"):
        _score(model, text, tmp_path)
    _no_files_but(tmp_path, "rows.parquet")


def test_a_boolean_column_is_the_wrong_type(
    model, features: pd.DataFrame, tmp_path: Path  # noqa: ANN001
) -> None:
    flags = features.assign(**{"mean area": features["mean area"] > 500})
    with pytest.raises(ScoringError, match="column 'mean area', row 1: holds bool values"):
        _score(model, flags, tmp_path)


def test_an_existing_output_is_never_replaced(
    model, features: pd.DataFrame, tmp_path: Path  # noqa: ANN001
) -> None:
    (tmp_path / "out.parquet").write_text("earlier predictions")
    with pytest.raises(FileExistsError, match="never overwritten"):
        _score(model, features, tmp_path)
    assert (tmp_path / "out.parquet").read_text() == "earlier predictions"
    with pytest.raises(FileExistsError, match="never overwritten"):
        check_output(str(tmp_path / "out.parquet"))


def test_the_output_format_comes_from_the_suffix() -> None:
    assert output_format("s3://bucket/p/x.CSV") == "csv"
    assert output_format("out.parquet") == "parquet"
    with pytest.raises(ValueError, match=r"must end in \.csv or \.parquet .* got '\.json'"):
        output_format("out.json")


def test_a_version_whose_model_changed_after_upload_is_refused(
    model, tmp_path: Path, mlops_home: Path  # noqa: ANN001
) -> None:
    store = LocalStore(tmp_path / "store")
    joblib.dump(model, tmp_path / "model.joblib")
    from mlops.store import sha256_file

    metadata = {"sha256": sha256_file(tmp_path / "model.joblib"), "feature_names": ["a"]}
    version = store.publish("m", tmp_path / "model.joblib", metadata)
    loaded, _, number = load_model(store.version_uri("m", version), tmp_path / "ok")
    assert number == 1 and hasattr(loaded, "predict_proba")
    joblib.dump("something else", tmp_path / "store" / "m" / "1" / "model.joblib")
    with pytest.raises(StoreError, match="sha256"):
        load_model(store.version_uri("m", version), tmp_path / "changed")


def test_a_csv_is_copied_to_parquet_in_chunks_with_the_whole_file_types(tmp_path: Path) -> None:
    # The first chunk reads as integers, a later one holds a decimal and one a word: the
    # chunked copy must give the types pandas gives the whole file.
    frame = pd.DataFrame({
        "count": list(range(25)) + [2.5] + list(range(4)),
        "label": ["a"] * 30,
        "code": list(range(28)) + ["x", 1],
        "value": np.linspace(0, 1, 30),
    })
    frame.to_csv(tmp_path / "in.csv", index=False)
    rows, columns = write_table(str(tmp_path / "in.csv"), tmp_path / "out.parquet", chunk_rows=10)
    assert (rows, columns) == (30, 4)
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "out.parquet"), pd.read_csv(tmp_path / "in.csv"),
        check_dtype=False,
    )
    assert pd.read_parquet(tmp_path / "out.parquet")["count"].dtype == np.float64


def test_a_consistent_csv_is_copied_chunk_by_chunk_unchanged(
    features: pd.DataFrame, tmp_path: Path
) -> None:
    features.to_csv(tmp_path / "in.csv", index=False)
    write_table(str(tmp_path / "in.csv"), tmp_path / "out.parquet", chunk_rows=33)
    import pyarrow.parquet as pq

    assert pq.ParquetFile(tmp_path / "out.parquet").metadata.num_row_groups == 7
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "out.parquet"), pd.read_csv(tmp_path / "in.csv")
    )


def test_a_parquet_file_is_copied_without_its_pandas_index(
    features: pd.DataFrame, tmp_path: Path
) -> None:
    indexed = features.set_index(pd.Index([f"case-{i}" for i in range(200)], name="case"))
    indexed.to_parquet(tmp_path / "in.parquet")
    write_table(str(tmp_path / "in.parquet"), tmp_path / "out.parquet", chunk_rows=64)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out.parquet"), features)


def test_mlops_score_refuses_an_existing_output_before_running(
    tmp_path: Path, mlops_home: Path
) -> None:
    (tmp_path / "out.csv").write_text("kept")
    result = CliRunner().invoke(
        main, ["score", "sklearn:breast_cancer", "--output", str(tmp_path / "out.csv")]
    )
    assert result.exit_code == 1
    assert result.output == (
        f"error: output '{tmp_path / 'out.csv'}' exists: predictions are never overwritten; "
        "choose another name\n"
    )
    assert (tmp_path / "out.csv").read_text() == "kept"


def test_mlops_score_without_a_champion_says_how_to_get_one(
    tmp_path: Path, mlops_home: Path
) -> None:
    result = CliRunner().invoke(
        main, ["score", "sklearn:breast_cancer", "--output", str(tmp_path / "out.csv")]
    )
    assert result.exit_code == 1
    assert "has no champion in MLflow" in result.output
    assert "(`mlops run`), or choose a version (--version)" in result.output
    assert len(result.output.splitlines()) == 1
    assert not (tmp_path / "out.csv").exists()
    assert not mlops_home.exists()  # not even an empty MLflow database


def test_mlops_score_on_a_missing_input_is_one_error_line(
    tmp_path: Path, mlops_home: Path
) -> None:
    result = CliRunner().invoke(
        main, ["score", str(tmp_path / "nope.csv"), "--output", str(tmp_path / "out.csv")]
    )
    assert result.exit_code == 1
    assert result.output == f"error: source '{tmp_path / 'nope.csv'}' does not exist\n"


class _Recording:
    """The tiny model, recording how much memory Arrow holds each time a chunk is scored."""

    def __init__(self, model) -> None:  # noqa: ANN001
        self.model, self.classes_, self.arrow_bytes = model, model.classes_, []

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        import pyarrow as pa

        self.arrow_bytes.append(pa.total_allocated_bytes())
        return self.model.predict_proba(features)


def test_memory_stays_at_one_chunk_however_long_the_table(
    model, features: pd.DataFrame, tmp_path: Path  # noqa: ANN001
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # 60 row groups of 2,000 rows (about 29 MB of floats); scored 2,000 rows at a time.
    table = pa.Table.from_pandas(features.sample(120_000, replace=True, random_state=0),
                                 preserve_index=False)
    pq.write_table(table, tmp_path / "rows.parquet", row_group_size=2_000)
    recording = _Recording(model)
    score_table(tmp_path / "rows.parquet", recording, list(features.columns), 1,
                tmp_path / "out.parquet", chunk_rows=2_000)
    assert len(recording.arrow_bytes) == 60
    # Arrow holds about a chunk while a chunk is scored, never the table's 29 MB (pyarrow's
    # pre-buffering, on by default, reads and keeps the whole file).
    held = max(recording.arrow_bytes)
    assert held < table.nbytes / 10, f"{held / 2**20:.1f} MiB held for a 2,000-row chunk"


def test_a_parquet_file_without_an_index_is_copied_as_it_is(
    features: pd.DataFrame, tmp_path: Path
) -> None:
    features.to_parquet(tmp_path / "in.parquet", index=False)
    assert write_table(str(tmp_path / "in.parquet"), tmp_path / "out.parquet") == (200, 30)
    assert (tmp_path / "out.parquet").read_bytes() == (tmp_path / "in.parquet").read_bytes()


def test_a_table_with_a_header_and_no_rows_gives_predictions_with_a_header_only(
    model, features: pd.DataFrame, tmp_path: Path  # noqa: ANN001
) -> None:
    features.head(0).to_csv(tmp_path / "in.csv", index=False)
    assert write_table(str(tmp_path / "in.csv"), tmp_path / "rows.parquet") == (0, 30)
    score_table(tmp_path / "rows.parquet", model, list(features.columns), 2,
                tmp_path / "out.csv")
    assert (tmp_path / "out.csv").read_text().strip() == (
        '"row","predicted_class","probability_0","probability_1","model_version"'
    )


def test_mlops_compile_writes_both_pipelines(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [
        "compile", "-o", str(tmp_path / "t.yaml"), "--scoring-output", str(tmp_path / "s.yaml"),
    ])
    assert result.exit_code == 0, result.output
    assert "name: train-gate-deploy-sklearn" in (tmp_path / "t.yaml").read_text()
    assert "name: batch-score-sklearn" in (tmp_path / "s.yaml").read_text()


def _mixed(n: int = 90) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({
        "size": rng.normal(size=n),
        "colour": rng.choice(["red", "green", "blue"], size=n).astype(object),
    })
    frame["label"] = np.where(frame["colour"] == "red", "yes", "no")
    frame.loc[::8, "size"] = np.nan
    frame.loc[::5, "colour"] = None
    return frame


def test_a_dataframe_model_scores_text_and_missing_values_as_its_own_predict(
    tmp_path: Path,
) -> None:
    from mlops.training import feature_types, fit_classifier, model_input

    frame = _mixed()
    model = fit_classifier(frame, "label", "random_forest", {"n_estimators": 10}, 0)
    types = feature_types(frame, "label")
    rows = frame.drop(columns=["label"])
    rows.loc[0, "colour"] = "purple"  # never seen in training: ignored by the encoder
    table = _table(rows, tmp_path / "rows.parquet")
    score_table(table, model, list(types), 1, tmp_path / "out.csv", chunk_rows=20,
                feature_types=types)
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == [
        "row", "predicted_class", "probability_no", "probability_yes", "model_version"
    ]
    expected = model_input(rows, types)
    assert out["predicted_class"].tolist() == model.predict(expected).tolist()
    np.testing.assert_allclose(
        out[["probability_no", "probability_yes"]].to_numpy(), model.predict_proba(expected)
    )


def test_a_model_that_imputes_takes_an_empty_numeric_cell_but_not_text(tmp_path: Path) -> None:
    from mlops.training import fit_classifier

    frame = _mixed()
    model = fit_classifier(frame, "label", "logistic_regression", {}, 0)
    types = {"size": "numeric", "colour": "categorical"}
    rows = frame.drop(columns=["label"])
    # A CSV column with one word in it is text, its empty cells nulls.
    rows["size"] = [None if pd.isna(v) else str(v) for v in rows["size"]]
    rows.loc[4, "size"] = "tall"
    table = _table(rows, tmp_path / "rows.parquet")
    with pytest.raises(ScoringError, match="column 'size', row 5: 'tall' is not a number; every "
                       "numeric feature needs a number or an empty cell"):
        score_table(table, model, list(types), 1, tmp_path / "out.csv", feature_types=types)
    _no_files_but(tmp_path, "rows.parquet")
    rows.loc[4, "size"] = None  # row 1 is empty too: both are imputed
    score_table(_table(rows, tmp_path / "ok.parquet"), model, list(types), 1,
                tmp_path / "out.csv", feature_types=types)
    assert len(pd.read_csv(tmp_path / "out.csv")) == len(rows)
