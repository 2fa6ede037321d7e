"""Models of users' own tables, stored as the core publishes them (/work CONTRACT-17).

Until the training side builds them (issue 17 item 3), these tests build them the way the
contract says it will: string labels on an all-numeric table (iris with species names, a
``tensor`` model), and a mixed table (numeric columns with missing values, a categorical string
column, string labels): a ``Pipeline`` of a ``ColumnTransformer`` selecting columns by name
(numeric -> SimpleImputer(median) + StandardScaler, categorical -> SimpleImputer(constant
"missing") + OneHotEncoder(handle_unknown="ignore")) and a LogisticRegression, a ``dataframe``
model. The metadata holds the contract's fields (``feature_types``, ``feature_categories``,
``input_kind``, ``classes``, ``class_names``, ``label_datatype``, numeric-only
``reference_statistics.features``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlops.store import LocalStore, ModelStore, sha256_file
from mlops.validation import reference_statistics

LABEL = "target"
CATEGORICAL = ["colour"]
NUMERIC = ["weight", "height", "age"]


def iris_with_names() -> pd.DataFrame:
    """Iris with the species names as labels (``setosa``, ...): three string classes."""
    from sklearn.datasets import load_iris

    data = load_iris(as_frame=True)
    frame = data.frame.rename(columns={"target": LABEL})
    frame[LABEL] = np.asarray(data.target_names)[data.target]
    frame.columns = [c.replace(" (cm)", "").replace(" ", "_") for c in frame.columns]
    return frame


def mixed_table(rows: int = 240, seed: int = 7) -> pd.DataFrame:
    """Numbers with missing values, a string column with missing values, string labels."""
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], size=rows).astype(object)
    weight = rng.normal(70, 12, rows)
    height = rng.normal(170, 9, rows)
    age = rng.integers(18, 80, rows).astype(float)
    score = (
        (weight - 70) / 12 + (colour == "red") * 1.5 - (colour == "blue") + rng.normal(0, 0.5, rows)
    )
    label = np.where(score > 0.8, "high", np.where(score < -0.6, "low", "mid")).astype(object)
    frame = pd.DataFrame(
        {"weight": weight, "colour": colour, "height": height, "age": age, LABEL: label}
    )
    for column, missing in (("weight", 12), ("height", 5), ("age", 4), ("colour", 9)):
        frame.loc[rng.choice(rows, missing, replace=False), column] = None
    return frame


def fit_tensor(frame: pd.DataFrame) -> Pipeline:
    """An all-numeric model on a float matrix (``input_kind: tensor``)."""
    features = frame.drop(columns=[LABEL]).to_numpy(dtype=float)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    return model.fit(features, frame[LABEL].to_numpy())


def fit_mixed(frame: pd.DataFrame) -> Pipeline:
    """The contract's ``dataframe`` model: columns selected by name, then one classifier."""
    numeric = [c for c in frame.columns if c in NUMERIC]
    categorical = [c for c in frame.columns if c in CATEGORICAL]
    columns = ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            (
                "categorical",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value="missing"),
                    OneHotEncoder(handle_unknown="ignore"),
                ),
                categorical,
            ),
        ]
    )
    model = Pipeline([("columns", columns), ("model", LogisticRegression(max_iter=500))])
    return model.fit(frame.drop(columns=[LABEL]), frame[LABEL])


def table_metadata(model: Any, frame: pd.DataFrame) -> dict[str, Any]:
    """The contract's ``metadata.json`` fields for ``model`` trained on ``frame``."""
    names = [c for c in frame.columns if c != LABEL]
    types = {n: "categorical" if n in CATEGORICAL else "numeric" for n in names}
    numeric = [n for n in names if types[n] == "numeric"]
    reference = reference_statistics(frame[[*numeric, LABEL]].dropna(), LABEL)
    reference["categorical"] = {}
    categories: dict[str, list[str]] = {}
    for name in (n for n in names if types[n] == "categorical"):
        counts = frame[name].dropna().astype(str).value_counts(normalize=True).sort_index()
        categories[name] = counts.index.tolist()[:50]
        reference["categorical"][name] = {
            "categories": counts.index.tolist(),
            "fractions": counts.tolist(),
        }
    reference["examples"] = [
        {
            "features": {
                n: (None if pd.isna(v) else (str(v) if types[n] == "categorical" else float(v)))
                for n, v in frame[frame[LABEL] == label].iloc[0].drop(LABEL).items()
            },
            "label": label,
        }
        for label in reference["classes"]
    ]
    classes = model.classes_.tolist()
    return {
        "feature_names": names,
        "feature_types": types,
        "feature_categories": categories,
        "input_kind": "dataframe" if categories else "tensor",
        "classes": classes,
        "class_names": [str(c) for c in classes],
        "label_datatype": "BYTES",
        "reference_statistics": reference,
    }


def publish_table(
    store: ModelStore | Path,
    name: str,
    model: Any,
    frame: pd.DataFrame,
    tmp: Path,
    class_names: dict[str, str] | None = None,
) -> tuple[int, str]:
    """Publish ``model`` with the contract's metadata; ``(version, storage_uri)``.

    ``class_names`` maps a class to its display name (default: the class itself).
    """
    store = LocalStore(store) if isinstance(store, Path) else store
    path = tmp / f"model-{time.monotonic_ns()}.joblib"
    joblib.dump(model, path)
    metadata = {"sha256": sha256_file(path), **table_metadata(model, frame)}
    if class_names:
        metadata["class_names"] = [class_names.get(c, str(c)) for c in metadata["classes"]]
    version = store.publish(name, path, metadata)
    return version, store.version_uri(name, version)


def pandas_request(frame: pd.DataFrame, **parameters: Any) -> dict[str, Any]:
    """The v2 pandas-codec request of ``frame``'s rows: one tensor per column, as KServe reads it.

    BYTES for strings, FP64 for numbers, JSON null for a missing value.
    """
    inputs = []
    for name in frame.columns:
        values = frame[name]
        numeric = pd.api.types.is_numeric_dtype(values)
        data = [None if pd.isna(v) else (float(v) if numeric else str(v)) for v in values]
        datatype = "FP64" if numeric else "BYTES"
        inputs.append({"name": name, "shape": [len(frame)], "datatype": datatype, "data": data})
    return {"inputs": inputs, "parameters": {"content_type": "pd", **parameters}}
