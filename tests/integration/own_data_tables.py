"""The tables of the your-own-data matrix (``test_your_own_data.py``) and what each model says.

Small, seeded tables: int, text and bool labels; two and three classes; numbers with gaps; a
text (categorical) column with gaps; and the issue's imbalanced table (3% positives).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROWS = 200


def _numeric(seed: int, labels: Callable[[np.ndarray], Any]) -> pd.DataFrame:
    """Two informative numbers and one of noise; ``labels`` maps the signal to classes."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=ROWS)
    return pd.DataFrame({
        "signal": signal + rng.normal(scale=0.05, size=ROWS),
        "echo": signal * 2 + rng.normal(scale=0.1, size=ROWS),
        "noise": rng.normal(size=ROWS),
        "label": labels(signal),
    })


def _int_binary_with_gaps() -> pd.DataFrame:
    frame = _numeric(1, lambda s: (s > 0).astype(int))
    frame.loc[::10, "noise"] = np.nan  # an all-numeric table with gaps: still a tensor model
    return frame


def text_three_classes_mixed() -> pd.DataFrame:
    frame = _numeric(2, lambda s: np.select([s < -0.5, s < 0.5], ["low", "mid"], "high"))
    rng = np.random.default_rng(2)
    frame["shop"] = rng.choice(["north", "south", "east"], size=ROWS).astype(object)
    frame.loc[::7, "shop"] = None
    frame.loc[3::11, "signal"] = np.nan  # the echo still tells
    return frame


def _bool_with_a_text_column() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    colour = rng.choice(["red", "green", "blue"], size=ROWS)
    frame = pd.DataFrame({"colour": colour.astype(object), "noise": rng.normal(size=ROWS)})
    frame["label"] = colour == "red"
    return frame


def _text_binary() -> pd.DataFrame:
    return _numeric(4, lambda s: np.where(s > 0, "spam", "ham"))


@dataclass(frozen=True)
class Spec:
    """One case: the estimator, the table (or a built-in source) and what the model says."""

    estimator: str
    table: Callable[[], pd.DataFrame] | None
    suffix: str
    classes: list[Any]
    class_names: list[str]
    label_datatype: str
    input_kind: str
    source: str = ""


CASES = {
    "logistic-int-binary-gaps": Spec(
        "logistic_regression", _int_binary_with_gaps, ".csv", [0, 1], ["0", "1"], "INT64",
        "tensor",
    ),
    "forest-text-3-classes-mixed": Spec(
        "random_forest", text_three_classes_mixed, ".parquet", ["high", "low", "mid"],
        ["high", "low", "mid"], "BYTES", "dataframe",
    ),
    "boosting-bool-text-column": Spec(
        "gradient_boosting", _bool_with_a_text_column, ".csv", [False, True],
        ["False", "True"], "BOOL", "dataframe",
    ),
    "svc-text-binary": Spec(
        "svc", _text_binary, ".csv", ["ham", "spam"], ["ham", "spam"], "BYTES", "tensor"
    ),
    "hist-boosting-iris-names": Spec(
        "hist_gradient_boosting", None, "", [0, 1, 2], ["setosa", "versicolor", "virginica"],
        "INT64", "tensor", source="sklearn:iris",
    ),
}


# The imbalanced table of the issue: 3% positives, one feature that tells them apart a little.
def imbalanced_table(path: Path) -> Path:
    rng = np.random.default_rng(2)
    labels = np.zeros(1000, dtype=int)
    labels[rng.choice(1000, 30, replace=False)] = 1
    pd.DataFrame({
        "x1": rng.normal(size=1000) + 1.5 * labels, "x2": rng.normal(size=1000),
        "fraud": labels,
    }).to_csv(path, index=False)
    return path

