import numpy as np
import pandas as pd
import pytest

from mlops.training import (
    ESTIMATORS,
    accepts_missing,
    add_label_noise,
    build_classifier,
    feature_types,
    fit_classifier,
    input_kind,
    json_classes,
    label_datatype,
    model_input,
    normalize_labels,
    split_holdout,
    types_of,
)


def test_split_is_stratified_and_reproducible(breast_cancer: pd.DataFrame) -> None:
    train, holdout = split_holdout(breast_cancer, "target", 0.2, seed=7)
    again, _ = split_holdout(breast_cancer, "target", 0.2, seed=7)
    assert len(holdout) == 114 and len(train) == 455
    assert train.index.equals(again.index)
    assert holdout["target"].mean() == pytest.approx(breast_cancer["target"].mean(), abs=0.01)


def test_test_size_out_of_range_is_named(breast_cancer: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="test_size must be within"):
        split_holdout(breast_cancer, "target", 1.5, seed=0)


def test_classifier_is_a_scaling_pipeline() -> None:
    classifier = build_classifier("random_forest", {"n_estimators": 5}, seed=3)
    assert [name for name, _ in classifier.steps] == ["scale", "model"]
    assert classifier.named_steps["model"].get_params()["random_state"] == 3


def test_unknown_estimator_and_hyperparameter_are_named() -> None:
    with pytest.raises(ValueError, match="estimator 'svm' is unknown"):
        build_classifier("svm", {}, seed=0)
    with pytest.raises(ValueError, match="hyperparameter 'depth' is not a parameter"):
        build_classifier("random_forest", {"depth": 3}, seed=0)


def test_integral_floats_from_kfp_become_ints() -> None:
    model = build_classifier("logistic_regression", {"max_iter": 1000.0, "C": 1.0}, 0)
    params = model.named_steps["model"].get_params()
    assert params["max_iter"] == 1000 and isinstance(params["max_iter"], int)
    assert isinstance(params["C"], float)


def test_label_noise_changes_the_asked_share_of_labels() -> None:
    labels = np.array([0, 1] * 5000)
    noisy = add_label_noise(labels, 0.3, seed=1)
    assert (noisy != labels).mean() == pytest.approx(0.3, abs=0.02)
    assert set(np.unique(noisy)) == {0, 1}
    assert (add_label_noise(labels, 0.0, seed=1) == labels).all()
    with pytest.raises(ValueError, match="label_noise must be within"):
        add_label_noise(labels, 2.0, seed=1)


def test_fitted_model_predicts_the_classes(tiny_model) -> None:
    model, rows = tiny_model
    assert set(model.predict(rows)) <= {0, 1}
    assert model.predict_proba(rows).shape == (20, 2)


def test_fit_is_reproducible(breast_cancer: pd.DataFrame) -> None:
    a = fit_classifier(breast_cancer, "target", "random_forest", {"n_estimators": 10}, 5)
    b = fit_classifier(breast_cancer, "target", "random_forest", {"n_estimators": 10}, 5)
    rows = breast_cancer.drop(columns=["target"]).to_numpy()
    assert (a.predict_proba(rows) == b.predict_proba(rows)).all()


def _mixed_table(n: int = 120, seed: int = 0) -> pd.DataFrame:
    """Numbers and text, each with missing values; the label depends on both."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "size": rng.normal(size=n),
        "colour": rng.choice(["red", "green", "blue"], size=n).astype(object),
        "weight": rng.normal(size=n),
    })
    frame["label"] = np.where((frame["colour"] == "red") | (frame["size"] > 1), "yes", "no")
    frame.loc[::9, "size"] = np.nan
    frame.loc[::7, "colour"] = None
    return frame


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_every_estimator_fits_a_mixed_table_with_its_own_defaults(estimator: str) -> None:
    frame = _mixed_table()
    model = fit_classifier(frame, "label", estimator, {}, seed=0)
    types = feature_types(frame, "label")
    assert types == {"size": "numeric", "colour": "categorical", "weight": "numeric"}
    rows = model_input(frame, types)
    assert list(rows.columns) == ["size", "colour", "weight"]
    assert model.score(rows, frame["label"]) > 0.8
    # A text value never seen in training and a None (as KServe's pandas codec sends a JSON
    # null) are answered, not refused.
    unseen = rows.head(2).copy()
    unseen.loc[unseen.index[0], "colour"] = "purple"
    unseen.loc[unseen.index[1], "colour"] = None
    assert set(model.predict(unseen)) <= {"no", "yes"}
    assert accepts_missing(model)
    # None (Parquet, the pandas codec) and NaN (CSV) are the same missing category, whether or
    # not model_input normalized them first.
    as_none, as_nan = rows.head(1).copy(), rows.head(1).copy()
    as_none["colour"] = pd.Series([None], index=as_none.index, dtype=object)
    as_nan["colour"] = pd.Series([np.nan], index=as_nan.index, dtype=object)
    assert as_none["colour"].iloc[0] is None
    np.testing.assert_array_equal(model.predict_proba(as_none), model.predict_proba(as_nan))


def test_the_mixed_pipeline_selects_columns_by_name_and_imputes_inside() -> None:
    model = fit_classifier(_mixed_table(), "label", "logistic_regression", {}, seed=0)
    assert [name for name, _ in model.steps] == ["columns", "model"]
    columns = model.named_steps["columns"]
    assert [(name, cols) for name, _, cols in columns.transformers] == [
        ("numeric", ["size", "weight"]), ("categorical", ["colour"])
    ]
    assert columns.named_transformers_["categorical"].named_steps["encode"].handle_unknown \
        == "ignore"


def test_an_all_numeric_table_with_missing_values_imputes_and_stays_a_tensor_model(
    breast_cancer: pd.DataFrame,
) -> None:
    frame = breast_cancer.copy()
    frame.loc[:5, "mean radius"] = np.nan
    model = fit_classifier(frame, "target", "logistic_regression", {}, seed=0)
    assert [name for name, _ in model.steps] == ["impute", "scale", "model"]
    rows = frame.drop(columns=["target"]).to_numpy(dtype=float)[:10]
    assert model.predict(rows).shape == (10,) and accepts_missing(model)
    # Without missing values the model is the one of before issue 17: no imputer.
    plain = fit_classifier(breast_cancer, "target", "logistic_regression", {}, seed=0)
    assert not accepts_missing(plain)
    assert input_kind(feature_types(breast_cancer, "target")) == "tensor"


@pytest.mark.parametrize(("labels", "datatype"), [
    (["no", "yes", "maybe"], "BYTES"), ([True, False], "BOOL"), ([3, 7], "INT64"),
])
def test_classes_are_json_natives_with_their_v2_datatype(labels: list, datatype: str) -> None:
    frame = pd.DataFrame({"x": np.arange(60, dtype=float), "y": labels * (60 // len(labels))})
    model = fit_classifier(frame, "y", "random_forest", {"n_estimators": 5}, seed=0)
    classes = json_classes(model)
    assert classes == sorted(set(labels))
    assert all(type(c) is type(labels[0]) for c in classes)
    assert label_datatype(classes) == datatype


def test_whole_number_float_labels_become_integers() -> None:
    assert normalize_labels(pd.Series([1.0, 0.0])).tolist() == [1, 0]
    assert normalize_labels(pd.Series([1.0, 0.0])).dtype == np.int64
    assert normalize_labels(pd.Series([0.5, 1.0])).dtype == np.float64


def test_feature_types_of_metadata_follow_feature_names_not_the_key_order() -> None:
    metadata = {"feature_names": ["b", "a"], "feature_types": {"a": "categorical", "b": "numeric"}}
    assert list(types_of(metadata).items()) == [("b", "numeric"), ("a", "categorical")]
    assert types_of({"feature_names": ["x"]}) == {"x": "numeric"}  # an older version
