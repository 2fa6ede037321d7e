import json

import numpy as np
import pandas as pd
import pytest

from mlops.validation import (
    DataValidationError,
    data_fingerprint,
    reference_statistics,
    validate_table,
)


def test_the_default_dataset_is_valid(breast_cancer: pd.DataFrame) -> None:
    validate_table(breast_cancer, "target", min_rows=100)


def test_missing_label_column_is_named(breast_cancer: pd.DataFrame) -> None:
    with pytest.raises(DataValidationError, match="label column 'label' is missing"):
        validate_table(breast_cancer, "label", min_rows=1)


def test_expected_columns_report_missing_and_unexpected(breast_cancer: pd.DataFrame) -> None:
    expected = [*breast_cancer.columns.drop(["target", "mean radius"]), "age"]
    message = r"missing \['age'\], unexpected \['mean radius'\]"
    with pytest.raises(DataValidationError, match=message):
        validate_table(breast_cancer, "target", 1, expected)


def test_a_column_that_is_neither_numbers_nor_text_is_named_with_what_to_do(
    breast_cancer: pd.DataFrame,
) -> None:
    # Issue 17: text columns are categories now; a date column is still not a feature.
    frame = breast_cancer.assign(seen=np.datetime64("2024-01-01", "ns"))
    with pytest.raises(DataValidationError) as caught:
        validate_table(frame, "target", 1)
    assert str(caught.value) == (
        "column 'seen' has type datetime64[ns]; features must be numbers or text: convert it "
        "(a date to a number, e.g. days since a day) or drop the column"
    )


def test_text_columns_and_missing_feature_values_are_valid(breast_cancer: pd.DataFrame) -> None:
    frame = breast_cancer.assign(colour=["red", "blue", None] * 189 + ["red", "blue"])
    frame.loc[:2, "mean texture"] = np.nan
    validate_table(frame, "target", 1)


def test_every_problem_of_a_table_is_reported_at_once_each_with_what_to_do(
    breast_cancer: pd.DataFrame,
) -> None:
    frame = breast_cancer.astype({"target": float}).head(50).copy()
    frame.loc[0, "mean area"] = np.inf
    frame.loc[[5, 9], "target"] = np.nan
    frame["empty"] = np.nan
    frame["dose"] = ["1.5"] * 49 + ["high"]
    frame["seen"] = np.datetime64("2024-01-01", "ns")
    with pytest.raises(DataValidationError) as caught:
        validate_table(frame, "target", 100)
    lines = str(caught.value).splitlines()
    assert lines[0] == "the table has 6 problems:"
    assert lines[1:] == [
        "- column 'mean area' has infinite values (1 row): replace them with numbers or leave "
        "those cells empty (missing values are imputed)",
        "- column 'empty' has no values (every row is missing): drop the column",
        "- column 'dose' is numbers except 1 value (e.g. 'high' in row 50): correct those cells "
        "or leave them empty (missing values are imputed)",
        "- column 'seen' has type datetime64[ns]; features must be numbers or text: convert it "
        "(a date to a number, e.g. days since a day) or drop the column",
        "- label column 'target' has 2 missing values: drop those rows or fill in their class",
        "- the table has 50 rows; min_rows is 100: add rows or lower --min-rows",
    ]


def test_an_identifier_like_text_column_is_refused(breast_cancer: pd.DataFrame) -> None:
    frame = pd.concat([breast_cancer] * 2, ignore_index=True)
    frame["patient"] = [f"p{i}" for i in range(len(frame))]
    with pytest.raises(DataValidationError, match="column 'patient' has 1138 distinct text "
                       "values \\(at most 1000 categories\\): it looks like an identifier"):
        validate_table(frame, "target", 1)


def test_missing_labels_are_rejected(breast_cancer: pd.DataFrame) -> None:
    # The label is checked like the features: a NaN label would train as a third class.
    frame = breast_cancer.astype({"target": float})
    frame.loc[[5, 9], "target"] = np.nan
    with pytest.raises(DataValidationError, match="label column 'target' has 2 missing values"):
        validate_table(frame, "target", 1)


@pytest.mark.parametrize(("labels", "expected"), [
    ([0.5, 1.0] * 10, "label column 'y' holds fractional numbers (e.g. 0.5): a class label is"),
    (["a", 1] * 10, "label column 'y' mixes value types (int, str): use one type"),
    (["a"] * 19 + ["b"], "label column 'y': class 'b' has 1 row; every class needs at least 2"),
    ([str(i) for i in range(101)] * 2, "label column 'y' has 101 classes (at most 100)"),
])
def test_a_label_that_is_no_class_label_is_refused_with_what_to_do(
    labels: list, expected: str
) -> None:
    frame = pd.DataFrame({"x": np.arange(len(labels), dtype=float), "y": labels})
    with pytest.raises(DataValidationError) as caught:
        validate_table(frame, "y", 1)
    assert str(caught.value).startswith(expected)


@pytest.mark.parametrize("labels", [
    ["yes", "no"] * 10, [True, False] * 10, [1.0, 2.0, 3.0, 1.0] * 5, ["a", "b", "c", "d"] * 5,
])
def test_int_text_and_bool_labels_with_two_or_more_classes_are_valid(labels: list) -> None:
    validate_table(pd.DataFrame({"x": np.arange(20.0), "y": labels}), "y", 1)


def test_infinite_values_are_rejected(breast_cancer: pd.DataFrame) -> None:
    frame = breast_cancer.copy()
    frame.loc[0, "mean area"] = np.inf
    with pytest.raises(DataValidationError, match="column 'mean area' has infinite values"):
        validate_table(frame, "target", 1)


def test_one_class_label_is_rejected(breast_cancer: pd.DataFrame) -> None:
    frame = breast_cancer[breast_cancer["target"] == 1]
    with pytest.raises(DataValidationError, match="'target' has 1 class; at least 2"):
        validate_table(frame, "target", 1)


def test_too_few_rows_is_rejected(breast_cancer: pd.DataFrame) -> None:
    with pytest.raises(DataValidationError, match="569 rows; min_rows is 1000"):
        validate_table(breast_cancer, "target", 1000)


def test_fingerprint_is_stable_and_sees_one_changed_value(breast_cancer: pd.DataFrame) -> None:
    assert data_fingerprint(breast_cancer) == data_fingerprint(breast_cancer.copy())
    changed = breast_cancer.copy()
    changed.iloc[5, 3] += 1e-9
    assert data_fingerprint(changed) != data_fingerprint(breast_cancer)


def test_reference_statistics_describe_every_feature(breast_cancer: pd.DataFrame) -> None:
    stats = reference_statistics(breast_cancer, "target")
    assert stats["rows"] == 569
    assert set(stats["features"]) == set(breast_cancer.columns.drop("target"))
    radius = stats["features"]["mean radius"]
    assert radius["mean"] == pytest.approx(breast_cancer["mean radius"].mean())
    assert sum(radius["bin_fractions"]) == pytest.approx(1.0)
    assert len(radius["bin_fractions"]) == len(radius["bin_edges"]) + 1


def test_reference_statistics_keep_one_real_row_per_class(breast_cancer: pd.DataFrame) -> None:
    stats = reference_statistics(breast_cancer, "target")
    assert stats["classes"] == [0, 1]
    assert [example["label"] for example in stats["examples"]] == [0, 1]
    for example in stats["examples"]:
        first = breast_cancer[breast_cancer["target"] == example["label"]].iloc[0]
        assert example["features"] == first.drop("target").astype(float).to_dict()
    json.dumps(stats)  # it goes into metadata.json as it is


def test_text_features_get_category_shares_and_examples_keep_text_and_missing_values() -> None:
    frame = pd.DataFrame({
        "size": [1.0, np.nan, 3.0, 4.0, 5.0, 6.0],
        "colour": ["red", "red", None, "blue", "red", "blue"],
        "y": ["no", "yes", "no", "yes", "no", "yes"],
    })
    stats = reference_statistics(frame, "y")
    assert set(stats["features"]) == {"size"}  # numeric features only, as before
    assert stats["features"]["size"]["mean"] == pytest.approx(3.8)  # the NaN left out
    assert stats["categorical"] == {
        "colour": {"categories": ["red", "blue"], "fractions": [0.5, 2 / 6]}
    }
    assert stats["classes"] == ["no", "yes"]
    # The first complete row of each class (the form sends it as it is).
    assert stats["examples"] == [
        {"features": {"size": 1.0, "colour": "red"}, "label": "no"},
        {"features": {"size": 4.0, "colour": "blue"}, "label": "yes"},
    ]
    json.dumps(stats)
