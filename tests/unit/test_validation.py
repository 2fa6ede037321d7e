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


def test_non_numeric_feature_is_named(breast_cancer: pd.DataFrame) -> None:
    frame = breast_cancer.assign(**{"mean radius": "big"})
    with pytest.raises(DataValidationError, match="column 'mean radius' has type object"):
        validate_table(frame, "target", 1)


def test_missing_values_are_counted_per_column(breast_cancer: pd.DataFrame) -> None:
    frame = breast_cancer.copy()
    frame.loc[:2, "mean texture"] = np.nan
    with pytest.raises(DataValidationError, match="column 'mean texture' has 3 missing values"):
        validate_table(frame, "target", 1)


def test_missing_labels_are_rejected(breast_cancer: pd.DataFrame) -> None:
    # The label is checked like the features: a NaN label would train as a third class.
    frame = breast_cancer.astype({"target": float})
    frame.loc[[5, 9], "target"] = np.nan
    with pytest.raises(DataValidationError, match="column 'target' has 2 missing values"):
        validate_table(frame, "target", 1)


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
