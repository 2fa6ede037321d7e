import numpy as np
import pandas as pd
import pytest

from mlops.training import add_label_noise, build_classifier, fit_classifier, split_holdout


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
