"""Split the table, fit a scikit-learn ``Pipeline`` (preprocessing + estimator), save it.

The preprocessing is part of the model, so the one file KServe loads does all of it:

* every feature numeric ("tensor" input): ``[SimpleImputer(median)] -> StandardScaler ->
  estimator`` on a float matrix in ``feature_names`` order, the imputer only when the training
  table had missing values (a model trained without one answers a NaN with an error);
* a text (categorical) feature ("dataframe" input): a ``ColumnTransformer`` that selects the
  columns of a DataFrame by name: numbers are imputed (median) and scaled, text is imputed
  (``"missing"``) and one-hot encoded, unseen categories ignored.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC

from mlops.estimators import FIXED_PARAMETERS, effective_hyperparameters

# The table's schema is the validation's (no scikit-learn needed); named here too, as the model's.
from mlops.validation import (
    CATEGORICAL,
    DATAFRAME,
    NUMERIC,
    TENSOR,
    feature_types,
    input_kind,
    normalize_labels,
    types_of,
)

__all__ = [
    "CATEGORICAL",
    "DATAFRAME",
    "ESTIMATORS",
    "NUMERIC",
    "TENSOR",
    "accepts_missing",
    "add_label_noise",
    "build_classifier",
    "feature_types",
    "fit_classifier",
    "input_kind",
    "json_classes",
    "label_datatype",
    "model_input",
    "normalize_labels",
    "preprocessor",
    "split_holdout",
    "types_of",
]

ESTIMATORS: dict[str, type[ClassifierMixin]] = {
    "logistic_regression": LogisticRegression,
    "random_forest": RandomForestClassifier,
    "gradient_boosting": GradientBoostingClassifier,
    "svc": SVC,
    "hist_gradient_boosting": HistGradientBoostingClassifier,
}
# What a missing text value becomes before one-hot encoding: a category of its own.
MISSING_CATEGORY = "missing"


def model_input(frame: pd.DataFrame, types: dict[str, str]) -> np.ndarray | pd.DataFrame:
    """The rows as the model takes them (see the module docstring), from a table's columns.

    A tensor model gets a float matrix (missing = NaN); a dataframe model a DataFrame with
    exactly the feature columns, numbers as floats and text as ``str`` (missing = NaN).
    """
    names = list(types)
    if input_kind(types) == TENSOR:
        return frame[names].to_numpy(dtype=float)
    columns: dict[str, Any] = {}
    for name, kind in types.items():
        values = frame[name]
        if kind == NUMERIC:
            columns[name] = pd.to_numeric(values, errors="coerce").astype(float)
        else:
            text = values.astype(object).where(values.notna(), np.nan)
            columns[name] = text.map(lambda v: np.nan if pd.isna(v) else str(v)).astype(object)
    return pd.DataFrame(columns, index=frame.index)[names]


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


def _estimator(estimator: str, hyperparameters: dict[str, Any], seed: int) -> ClassifierMixin:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator {estimator!r} is unknown: use one of {sorted(ESTIMATORS)}")
    model = ESTIMATORS[estimator](**FIXED_PARAMETERS.get(estimator, {}))
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
    model.set_params(**{"random_state": seed, **typed, **FIXED_PARAMETERS.get(estimator, {})})
    return model


def preprocessor(types: dict[str, str] | None, impute: bool) -> list[tuple[str, Any]]:
    """The steps before the estimator, for these feature types (``None``: all numeric)."""
    if types is None or input_kind(types) == TENSOR:
        steps: list[tuple[str, Any]] = []
        if impute:
            steps.append(("impute", SimpleImputer(strategy="median")))
        return [*steps, ("scale", StandardScaler())]
    numeric = [name for name, kind in types.items() if kind == NUMERIC]
    categorical = [name for name, kind in types.items() if kind == CATEGORICAL]
    text = Pipeline(
        [
            # pandas reads a missing text value as NaN from CSV, as None from Parquet and
            # KServe's pandas codec: both become the category "missing".
            ("impute_nan", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
            (
                "impute_none",
                SimpleImputer(
                    missing_values=None, strategy="constant", fill_value=MISSING_CATEGORY
                ),
            ),
            ("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
    numbers = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    transformers = [("categorical", text, categorical)]
    if numeric:
        transformers.insert(0, ("numeric", numbers, numeric))
    return [("columns", ColumnTransformer(transformers, remainder="drop"))]


def build_classifier(
    estimator: str,
    hyperparameters: dict[str, Any],
    seed: int,
    types: dict[str, str] | None = None,
    impute: bool = False,
) -> Pipeline:
    """Return an unfitted ``Pipeline`` of the preprocessing and the named estimator.

    Args:
        estimator: One of ``ESTIMATORS``.
        hyperparameters: Keyword arguments of the estimator (empty: its
            ``DEFAULT_HYPERPARAMETERS``).
        seed: ``random_state`` of the estimator, unless ``hyperparameters`` sets it.
        types: ``feature_types`` of the training table; ``None``: every feature numeric.
        impute: Whether an all-numeric model imputes missing values (the table had some).

    Raises:
        ValueError: When the estimator or one of its hyperparameters is unknown.
    """
    model = _estimator(estimator, effective_hyperparameters(estimator, hyperparameters), seed)
    return Pipeline([*preprocessor(types, impute), ("model", model)])


def accepts_missing(model: Any) -> bool:
    """Whether the fitted ``Pipeline`` imputes missing values itself (NaN may be sent)."""
    steps = getattr(model, "steps", None) or []
    return bool(steps) and isinstance(steps[0][1], SimpleImputer | ColumnTransformer)


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

    An all-numeric table is fitted on a plain array, in column order, because that is what a
    v2 inference request carries; the feature names travel in the model's metadata instead.
    A table with text columns is fitted on a DataFrame (``model_input``).
    """
    types = feature_types(train, label_column)
    impute = bool(train[list(types)].isna().to_numpy().any())
    classifier = build_classifier(estimator, hyperparameters, seed, types, impute)
    labels = normalize_labels(train[label_column]).to_numpy()
    labels = add_label_noise(labels, label_noise, seed)
    return classifier.fit(model_input(train, types), labels)


def json_classes(model: Any) -> list[Any]:
    """``model.classes_`` as JSON natives (int, str or bool), in the model's order."""
    return [c.item() if isinstance(c, np.generic) else c for c in np.asarray(model.classes_)]


def label_datatype(classes: list[Any]) -> str:
    """The v2 datatype of a predicted label: ``BOOL``, ``INT64`` or ``BYTES`` (text)."""
    if classes and all(isinstance(c, bool) for c in classes):
        return "BOOL"
    if classes and all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return "INT64"
    return "BYTES"
