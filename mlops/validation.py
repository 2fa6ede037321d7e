"""Check the table before training, and record what the training data looks like.

Also the table's schema as the model sees it: which features are numeric and which text.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd

# Ten quantile bins per feature: enough for a stable PSI on a few hundred served rows.
REFERENCE_BINS = 10
# A feature's kind, and the model input the kinds make (``feature_types``, ``input_kind`` of a
# version's metadata); here, not in ``mlops.training``, because they need no scikit-learn.
NUMERIC, CATEGORICAL = "numeric", "categorical"
TENSOR, DATAFRAME = "tensor", "dataframe"


def feature_types(frame: pd.DataFrame, label_column: str) -> dict[str, str]:
    """``{column: "numeric" | "categorical"}`` for every feature, in column order.

    Numbers (not booleans) are numeric; text and booleans are categories.
    """
    return {
        str(column): NUMERIC
        if pd.api.types.is_numeric_dtype(frame[column])
        and not pd.api.types.is_bool_dtype(frame[column])
        else CATEGORICAL
        for column in frame.columns
        if column != label_column
    }


def types_of(metadata: dict[str, Any]) -> dict[str, str]:
    """A model's ``feature_types`` in ``feature_names`` order, from its metadata.

    The order is the column order of the model's input, and only ``feature_names`` keeps it: a
    JSON object (a KFP artifact's metadata, a protobuf Struct) may come back with sorted keys.
    Without ``feature_types`` (a version older than them) every feature is numeric.
    """
    types = metadata.get("feature_types") or {}
    return {str(name): types.get(name, NUMERIC) for name in metadata.get("feature_names") or []}


def input_kind(types: dict[str, str]) -> str:
    """``"tensor"`` when every feature is numeric, else ``"dataframe"``."""
    return DATAFRAME if CATEGORICAL in types.values() else TENSOR


def normalize_labels(labels: pd.Series) -> pd.Series:
    """Whole-number float labels (a CSV column with a gap reads as floats) become integers."""
    if pd.api.types.is_float_dtype(labels) and labels.notna().all():
        values = labels.to_numpy()
        if np.all(np.mod(values, 1) == 0):
            return labels.astype(np.int64)
    return labels


class DataValidationError(ValueError):
    """The table is not fit for training; the message lists every problem, one per line."""


# A text column with more distinct values than this is an identifier or free text, not a
# category: one-hot encoding it would make thousands of columns and learn nothing.
MAX_CATEGORIES = 1000
# A label with more classes than this is an identifier or a number to regress, not a class.
MAX_CLASSES = 100
# The categories per text feature kept in the metadata for display (the model keeps all).
SHOWN_CATEGORIES = 50


def validate_table(
    frame: pd.DataFrame,
    label_column: str,
    min_rows: int,
    expected_columns: list[str] | None = None,
) -> None:
    """Check columns, types, values, the label and the row count; report every problem at once.

    Numbers, text (categories) and booleans are features; missing feature values are allowed
    (the model imputes them). The label may be integers, text or booleans.

    Args:
        frame: The table to check.
        label_column: The column holding the class label.
        min_rows: The fewest rows a training run accepts.
        expected_columns: When given, exactly these feature columns must be present.

    Raises:
        DataValidationError: Listing every problem found, each naming the column, what was
            expected and what to do.
    """
    problems = table_problems(frame, label_column, min_rows, expected_columns)
    if len(problems) == 1:
        raise DataValidationError(problems[0])
    if problems:
        raise DataValidationError(
            f"the table has {len(problems)} problems:\n" + "\n".join(f"- {p}" for p in problems)
        )


def table_problems(
    frame: pd.DataFrame,
    label_column: str,
    min_rows: int,
    expected_columns: list[str] | None = None,
) -> list[str]:
    """Every problem of the table as a sentence (what is wrong, what to do); empty when fit."""
    problems: list[str] = []
    if label_column not in frame.columns:
        problems.append(
            f"label column {label_column!r} is missing; columns are "
            f"{[str(c) for c in frame.columns[:8]]}{'...' if len(frame.columns) > 8 else ''}: "
            "name the label with --label-column"
        )
    features = [c for c in frame.columns if c != label_column]
    if expected_columns:
        missing = [c for c in expected_columns if c not in features]
        extra = [c for c in features if c not in expected_columns]
        if missing or extra:
            problems.append(
                f"columns do not match expected_columns: missing {missing}, unexpected {extra}"
            )
    if not features:
        problems.append("the table has no feature columns besides the label: add some")
    for column in features:
        problems.extend(_feature_problems(frame[column], str(column)))
    if label_column in frame.columns:
        problems.extend(_label_problems(frame[label_column], label_column))
    if len(frame) < min_rows:
        problems.append(
            f"the table has {len(frame)} rows; min_rows is {min_rows}: add rows or lower --min-rows"
        )
    return problems


def _feature_problems(values: pd.Series, column: str) -> list[str]:
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    text = pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values)
    if not (numeric or text or pd.api.types.is_bool_dtype(values)):
        return [
            f"column {column!r} has type {values.dtype}; features must be numbers or text: "
            "convert it (a date to a number, e.g. days since a day) or drop the column"
        ]
    if values.isna().all():
        return [f"column {column!r} has no values (every row is missing): drop the column"]
    if numeric:
        infinite = int(np.isinf(values.to_numpy(dtype=float)).sum())
        if infinite:
            return [
                f"column {column!r} has infinite values ({_plural(infinite, 'row')}): replace "
                "them with numbers or leave those cells empty (missing values are imputed)"
            ]
        return []
    present = values.dropna().astype(str)
    numbers = pd.to_numeric(present, errors="coerce")
    words = present[numbers.isna()]
    if len(present) and not words.empty and len(words) <= 0.1 * len(present):
        return [
            f"column {column!r} is numbers except {_plural(len(words), 'value')} (e.g. "
            f"{words.iloc[0][:20]!r} in row {_row_number(words.index[0], values)}): correct "
            "those cells or leave them empty (missing values are imputed)"
        ]
    distinct = present.nunique()
    if distinct > MAX_CATEGORIES:
        return [
            f"column {column!r} has {distinct} distinct text values (at most {MAX_CATEGORIES} "
            "categories): it looks like an identifier or free text; drop it, or make it "
            "numbers if it is a quantity"
        ]
    return []


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _row_number(index: Any, values: pd.Series) -> int:
    """The 1-based data row (after the header) of ``index`` in the table."""
    return int(values.index.get_loc(index)) + 1


def _label_problems(labels: pd.Series, label_column: str) -> list[str]:
    problems = []
    missing = int(labels.isna().sum())
    if missing:
        problems.append(
            f"label column {label_column!r} has {_plural(missing, 'missing value')}: drop those "
            "rows or fill in their class"
        )
    present = normalize_labels(labels.dropna())
    if pd.api.types.is_float_dtype(present) and not np.all(np.mod(present.to_numpy(), 1) == 0):
        return [
            *problems,
            f"label column {label_column!r} holds fractional numbers "
            f"(e.g. {float(present.iloc[0])!r}): "
            "a class label is an integer, a word or true/false; this looks like a quantity to "
            "regress, which this pipeline does not do",
        ]
    kinds = {type(v) for v in present.tolist()}
    if len(kinds) > 1:
        problems.append(
            f"label column {label_column!r} mixes value types "
            f"({', '.join(sorted(k.__name__ for k in kinds))}): use one type for every class"
        )
        return problems
    counts = present.value_counts()
    if len(counts) < 2:
        problems.append(
            f"label column {label_column!r} has {len(counts)} class; at least 2 are needed"
        )
    elif len(counts) > MAX_CLASSES:
        problems.append(
            f"label column {label_column!r} has {len(counts)} classes (at most {MAX_CLASSES}): "
            "it looks like an identifier or a quantity, not a class; choose another --label-column"
        )
    else:
        rare = [str(c) for c, n in counts.items() if n < 2]
        if rare:
            problems.append(
                f"label column {label_column!r}: class {rare[0]!r}"
                f"{f' (and {len(rare) - 1} more)' if len(rare) > 1 else ''} has 1 row; every "
                "class needs at least 2 (the holdout split keeps each class on both sides): add "
                "rows of it or drop them"
            )
    return problems


def data_fingerprint(frame: pd.DataFrame) -> str:
    """A sha256 of the table's columns and values, independent of the file it came from."""
    digest = hashlib.sha256("\x1f".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def bin_counts(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Count ``values`` in the bins that the inner ``edges`` make (``len(edges) + 1`` bins).

    The one binning rule: the training reference and the served-input drift monitor must count
    a value on an edge into the same bin, or PSI measures the rule instead of the data.
    """
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)


def _json_value(value: Any, kind: str) -> Any:
    """A table cell as JSON: a numeric feature's as a float, a text one's as str, missing: None."""
    if pd.isna(value):
        return None
    return float(value) if kind == "numeric" else str(value)


def _numeric_statistics(values: np.ndarray) -> dict[str, Any]:
    values = values[~np.isnan(values)]
    edges = np.unique(np.quantile(values, np.linspace(0, 1, REFERENCE_BINS + 1)[1:-1]))
    counts = bin_counts(edges, values)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "bin_edges": edges.tolist(),
        "bin_fractions": (counts / len(values)).tolist(),
    }


def _category_statistics(values: pd.Series) -> dict[str, Any]:
    counts = values.dropna().astype(str).value_counts().head(SHOWN_CATEGORIES)
    return {
        "categories": [str(c) for c in counts.index],
        "fractions": (counts.to_numpy() / len(values)).tolist(),
    }


def reference_statistics(frame: pd.DataFrame, label_column: str) -> dict[str, Any]:
    """Per-feature statistics of the training data, the reference that drift is measured against.

    Returns:
        ``{"features": {name: {mean, std, min, max, bin_edges, bin_fractions}},
        "categorical": {name: {categories, fractions}}, "rows": n, "classes": [...],
        "examples": [{"features": {name: value}, "label": y}, ...]}``. ``features`` holds the
        numeric features (missing values left out of their statistics); ``bin_edges`` are the
        inner quantile edges, ``bin_fractions`` the share of rows per bin. ``categorical``
        holds the text features: the most frequent categories (at most ``SHOWN_CATEGORIES``)
        and the share of rows of each. ``classes`` are the sorted labels (scikit-learn's
        ``classes_`` order) as JSON values; ``examples`` the first row of each class (the
        first without missing values, if any) with every feature (text as str, missing as
        null), real rows the web form offers as "fill with an example".
    """
    types = feature_types(frame, label_column)
    stats: dict[str, Any] = {}
    categorical: dict[str, Any] = {}
    for column, kind in types.items():
        if kind == NUMERIC:
            stats[column] = _numeric_statistics(frame[column].to_numpy(dtype=float))
        else:
            categorical[column] = _category_statistics(frame[column])
    labels = normalize_labels(frame[label_column])
    classes = np.unique(labels.to_numpy()).tolist()
    examples = []
    complete = frame.notna().all(axis=1).to_numpy()
    for label in classes:
        of_class = (labels == label).to_numpy()
        # A complete row if the class has one: an example the form can send as it is.
        chosen = of_class & complete if (of_class & complete).any() else of_class
        row = frame[chosen].iloc[0].drop(label_column)
        features = {str(c): _json_value(v, types[str(c)]) for c, v in row.items()}
        examples.append({"features": features, "label": label})
    return {
        "features": stats,
        "categorical": categorical,
        "rows": len(frame),
        "classes": classes,
        "examples": examples,
    }
