"""Population stability index (PSI) of served inputs against the training reference.

The training data's per-feature quantile bins travel with the model (``metadata.json``,
``reference_statistics``); served rows are counted in the same bins, and
``PSI = sum((served - reference) * ln(served / reference))`` over the bins. Common reading:
below 0.1 stable, 0.1 to 0.25 a moderate shift, above 0.25 a significant one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlops.validation import bin_counts

STABLE = 0.1
SIGNIFICANT = 0.25
# An empty bin would make ln(0); a small floor keeps PSI finite and barely moves it.
_EPSILON = 1e-4
# Served rows are buffered and binned in batches: appending an array costs nothing on the
# request path, binning 30 features is done once per batch or scrape.
_FLUSH_ROWS = 4096
# A large request adds an evenly spaced sample of its rows: ten bins need a few hundred rows
# in all, and binning every row of 1000-row requests cost more than the prediction itself.
SAMPLE_ROWS = 100


def psi(reference_fractions: np.ndarray, served_counts: np.ndarray) -> float:
    """The PSI of served bin counts against the reference bin fractions.

    Args:
        reference_fractions: Share of training rows per bin (sums to 1).
        served_counts: Number of served rows per bin, same bins.

    Returns:
        The index (0 when nothing was served yet).
    """
    total = served_counts.sum()
    if total == 0:
        return 0.0
    served = np.clip(served_counts / total, _EPSILON, None)
    reference = np.clip(np.asarray(reference_fractions, dtype=float), _EPSILON, None)
    return float(np.sum((served - reference) * np.log(served / reference)))


def classify(value: float) -> str:
    """``stable``, ``moderate`` or ``significant``, by the usual PSI thresholds."""
    if value < STABLE:
        return "stable"
    return "moderate" if value < SIGNIFICANT else "significant"


@dataclass(frozen=True)
class FeatureDrift:
    """PSI of one feature.

    Attributes:
        feature: The feature name.
        psi: The index over all rows served so far.
        served_mean: Mean of the served values.
        reference_mean: Mean of the training values.
    """

    feature: str
    psi: float
    served_mean: float
    reference_mean: float


class DriftMonitor:
    """Counts served rows in the reference bins of every feature; thread-safe."""

    def __init__(self, feature_names: list[str], reference: dict[str, Any]) -> None:
        """Set up the bins.

        Args:
            feature_names: The model's features, in column order.
            reference: ``reference_statistics`` from the model's metadata.

        Raises:
            ValueError: When a feature has no reference statistics.
        """
        features = reference.get("features", {})
        missing = [name for name in feature_names if name not in features]
        if missing:
            raise ValueError(f"reference_statistics has no entry for features {missing[:3]}")
        self.feature_names = list(feature_names)
        self._edges = [np.asarray(features[n]["bin_edges"], dtype=float) for n in feature_names]
        self._fractions = [
            np.asarray(features[n]["bin_fractions"], dtype=float) for n in feature_names
        ]
        self._reference_means = [float(features[n]["mean"]) for n in feature_names]
        self._counts = [np.zeros(len(f), dtype=np.int64) for f in self._fractions]
        self._sums = np.zeros(len(feature_names))
        self._rows = 0
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._lock = threading.Lock()

    def observe(self, matrix: np.ndarray) -> None:
        """Record served rows (``[rows, features]``, validated); at most ``SAMPLE_ROWS`` of them."""
        if len(matrix) > SAMPLE_ROWS:
            matrix = matrix[:: -(-len(matrix) // SAMPLE_ROWS)]
        with self._lock:
            self._pending.append(matrix)
            self._pending_rows += len(matrix)
            if self._pending_rows >= _FLUSH_ROWS:
                self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        batch = np.concatenate(self._pending)
        self._pending, self._pending_rows = [], 0
        for column, edges in enumerate(self._edges):
            self._counts[column] += bin_counts(edges, batch[:, column])
        self._sums += batch.sum(axis=0)
        self._rows += len(batch)

    @property
    def rows(self) -> int:
        """Rows the statistics cover (large requests contribute a sample)."""
        with self._lock:
            return self._rows + self._pending_rows

    def report(self) -> list[FeatureDrift]:
        """PSI per feature over the rows served so far, in feature order."""
        with self._lock:
            self._flush()
            rows = max(self._rows, 1)
            return [
                FeatureDrift(
                    feature=name,
                    psi=psi(self._fractions[i], self._counts[i]) if self._rows else 0.0,
                    served_mean=float(self._sums[i] / rows),
                    reference_mean=self._reference_means[i],
                )
                for i, name in enumerate(self.feature_names)
            ]
