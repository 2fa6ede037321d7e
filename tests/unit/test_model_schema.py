"""The metadata a stored version carries about its input and its classes (issue 17 contract)."""

from pathlib import Path

import numpy as np
import pandas as pd

from mlops.data import builtin_class_names
from mlops.publishing import build_metadata, model_schema
from mlops.training import feature_types, fit_classifier


def test_a_mixed_table_model_is_a_dataframe_model_with_its_categories(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "colour": rng.choice(["red", "blue", None], size=60),
        "size": rng.normal(size=60),
        "y": ["a", "b", "c"] * 20,
    })
    model = fit_classifier(frame, "y", "logistic_regression", {}, 0)
    types = feature_types(frame, "y")
    schema = model_schema(model, types)
    assert schema == {
        "feature_types": {"colour": "categorical", "size": "numeric"},
        "feature_categories": {"colour": ["blue", "red"]},  # a missing one is sent as null
        "input_kind": "dataframe",
        "classes": ["a", "b", "c"],
        "class_names": ["a", "b", "c"],
        "label_datatype": "BYTES",
    }
    path = tmp_path / "model.joblib"
    path.write_bytes(b"model")
    # Feature types come back in column order whatever order the schema's keys have.
    shuffled = {**schema, "feature_types": {"size": "numeric", "colour": "categorical"}}
    metadata = build_metadata(path, {}, "", {}, {}, ["colour", "size"], "1.5.2", shuffled)
    assert list(metadata["feature_types"]) == ["colour", "size"]
    assert metadata["input_kind"] == "dataframe" and metadata["label_datatype"] == "BYTES"


def test_a_built_in_dataset_s_classes_carry_its_target_names(breast_cancer: pd.DataFrame) -> None:
    names = builtin_class_names("sklearn:breast_cancer")
    assert names == {"0": "malignant", "1": "benign"}
    model = fit_classifier(breast_cancer, "target", "logistic_regression", {}, 0)
    schema = model_schema(model, feature_types(breast_cancer, "target"), names)
    assert schema["classes"] == [0, 1] and schema["class_names"] == ["malignant", "benign"]
    assert schema["input_kind"] == "tensor" and schema["label_datatype"] == "INT64"
    assert schema["feature_categories"] == {}
    assert builtin_class_names("data.csv") == {}


def test_an_older_caller_without_a_schema_writes_the_metadata_of_before(tmp_path: Path) -> None:
    path = tmp_path / "model.joblib"
    path.write_bytes(b"model")
    metadata = build_metadata(path, {}, "", {}, {}, ["a"], "1.5.2")
    assert "input_kind" not in metadata and metadata["feature_names"] == ["a"]
