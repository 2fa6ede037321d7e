"""Check the table before training, and record what the training data looks like."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd

# Ten quantile bins per feature: enough for a stable PSI on a few hundred served rows.
REFERENCE_BINS = 10


class DataValidationError(ValueError):
    """The table is not fit for training; the message names the column and the problem."""


def validate_table(
    frame: pd.DataFrame,
    label_column: str,
    min_rows: int,
    expected_columns: list[str] | None = None,
) -> None:
    """Check columns, types, missing values, the label and the row count.

    Args:
        frame: The table to check.
        label_column: The column holding the class label.
        min_rows: The fewest rows a training run accepts.
        expected_columns: When given, exactly these feature columns must be present.

    Raises:
        DataValidationError: On the first problem found, naming the column.
    """
    if label_column not in frame.columns:
        raise DataValidationError(
            f"label column {label_column!r} is missing; columns are {list(frame.columns)[:8]}..."
        )
    features = [c for c in frame.columns if c != label_column]
    if expected_columns:
        missing = [c for c in expected_columns if c not in features]
        extra = [c for c in features if c not in expected_columns]
        if missing or extra:
            raise DataValidationError(
                f"columns do not match expected_columns: missing {missing}, unexpected {extra}"
            )
    if not features:
        raise DataValidationError("the table has no feature columns besides the label")
    for column in features:
        if not pd.api.types.is_numeric_dtype(frame[column]) or pd.api.types.is_bool_dtype(
            frame[column]
        ):
            raise DataValidationError(
                f"column {column!r} has type {frame[column].dtype}; features must be numeric"
            )
    for column in frame.columns:
        missing_count = int(frame[column].isna().sum())
        if missing_count:
            raise DataValidationError(f"column {column!r} has {missing_count} missing values")
    infinite = [c for c in features if not np.isfinite(frame[c].to_numpy(dtype=float)).all()]
    if infinite:
        raise DataValidationError(f"column {infinite[0]!r} has infinite values")
    classes = frame[label_column].nunique()
    if classes < 2:
        raise DataValidationError(
            f"label column {label_column!r} has {classes} class; at least 2 are needed"
        )
    if len(frame) < min_rows:
        raise DataValidationError(f"the table has {len(frame)} rows; min_rows is {min_rows}")


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


def reference_statistics(frame: pd.DataFrame, label_column: str) -> dict[str, Any]:
    """Per-feature statistics of the training data, the reference that drift is measured against.

    Returns:
        ``{"features": {name: {mean, std, min, max, bin_edges, bin_fractions}}, "rows": n,
        "classes": [...], "examples": [{"features": {name: value}, "label": y}, ...]}``;
        ``bin_edges`` are the inner quantile edges, ``bin_fractions`` the share of rows per bin;
        ``classes`` the sorted labels (scikit-learn's ``classes_`` order); ``examples`` the
        first row of each class, real rows the web form offers as "fill with an example".
    """
    stats: dict[str, Any] = {}
    for column in (c for c in frame.columns if c != label_column):
        values = frame[column].to_numpy(dtype=float)
        edges = np.unique(np.quantile(values, np.linspace(0, 1, REFERENCE_BINS + 1)[1:-1]))
        counts = bin_counts(edges, values)
        stats[column] = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "min": float(values.min()),
            "max": float(values.max()),
            "bin_edges": edges.tolist(),
            "bin_fractions": (counts / len(values)).tolist(),
        }
    classes = np.unique(frame[label_column].to_numpy()).tolist()
    examples = []
    for label in classes:
        row = frame[frame[label_column] == label].iloc[0].drop(label_column)
        examples.append({"features": {c: float(v) for c, v in row.items()}, "label": label})
    return {"features": stats, "rows": len(frame), "classes": classes, "examples": examples}
