"""Split the table, fit a scikit-learn ``Pipeline`` (scaling + estimator), save it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

ESTIMATORS: dict[str, type[ClassifierMixin]] = {
    "logistic_regression": LogisticRegression,
    "random_forest": RandomForestClassifier,
    "gradient_boosting": GradientBoostingClassifier,
}


def split_holdout(
    frame: pd.DataFrame, label_column: str, test_size: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split into train and holdout, stratified on the label, reproducible with ``seed``.

    Raises:
        ValueError: When ``test_size`` is not within (0, 1).
    """
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be within (0, 1), got {test_size}")
    train, holdout = train_test_split(
        frame, test_size=test_size, random_state=seed, stratify=frame[label_column]
    )
    return train, holdout


def build_classifier(estimator: str, hyperparameters: dict[str, Any], seed: int) -> Pipeline:
    """Return an unfitted ``Pipeline`` of ``StandardScaler`` and the named estimator.

    Args:
        estimator: One of ``ESTIMATORS``.
        hyperparameters: Keyword arguments of the estimator.
        seed: ``random_state`` of the estimator, unless ``hyperparameters`` sets it.

    Raises:
        ValueError: When the estimator or one of its hyperparameters is unknown.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator {estimator!r} is unknown: use one of {sorted(ESTIMATORS)}")
    model = ESTIMATORS[estimator]()
    unknown = sorted(set(hyperparameters) - set(model.get_params()))
    if unknown:
        raise ValueError(f"hyperparameter {unknown[0]!r} is not a parameter of {estimator}")
    defaults = model.get_params()
    # KFP carries dict parameters as protobuf Structs, where every number is a double.
    typed = {
        key: int(value)
        if isinstance(value, float) and value.is_integer() and not isinstance(defaults[key], float)
        else value
        for key, value in hyperparameters.items()
    }
    model.set_params(**{"random_state": seed, **typed})
    return Pipeline([("scale", StandardScaler()), ("model", model)])


def add_label_noise(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Change a ``fraction`` of labels to another class: a deliberately degraded model.

    Raises:
        ValueError: When ``fraction`` is not within [0, 1].
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"label_noise must be within [0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    classes, index = np.unique(labels, return_inverse=True)
    chosen = rng.random(len(labels)) < fraction
    # A non-zero offset modulo the class count always lands on a different class.
    offsets = rng.integers(1, len(classes), size=int(chosen.sum()))
    noisy = labels.copy()
    noisy[chosen] = classes[(index[chosen] + offsets) % len(classes)]
    return noisy


def fit_classifier(
    train: pd.DataFrame,
    label_column: str,
    estimator: str,
    hyperparameters: dict[str, Any],
    seed: int,
    label_noise: float = 0.0,
) -> Pipeline:
    """Fit the classifier on ``train``.

    The model is fitted on a plain array, in column order, because that is what a v2
    inference request carries; the feature names travel in the model's metadata instead.
    """
    classifier = build_classifier(estimator, hyperparameters, seed)
    features = train.drop(columns=[label_column]).to_numpy(dtype=float)
    labels = add_label_noise(train[label_column].to_numpy(), label_noise, seed)
    return classifier.fit(features, labels)
