"""Population stability index (PSI) of served inputs against the training reference.

The training data's per-feature quantile bins travel with the model (``metadata.json``,
``reference_statistics``); served rows are counted in the same bins, and
``PSI = sum((served - reference) * ln(served / reference))`` over the bins. Common reading:
below 0.1 stable, 0.1 to 0.25 a moderate shift, above 0.25 a significant one.

The bin counts are the ``mlops_input_bin_rows_total{feature,bin}`` counters, per revision: the
rollout reads them per window (``serving.canary_analysis``), and with several worker processes
(``PROMETHEUS_MULTIPROC_DIR``) ``report()`` reads them back through ``prometheus_client``'s
``MultiProcessCollector``, so ``mlops drift`` covers every worker's rows.

Only numeric features have bins: with ``feature_types`` in the metadata, categorical features
are skipped (a missing numeric value is counted in no bin).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlops.validation import bin_counts
from serving.observability import INPUT_BINS

STABLE = 0.1
SIGNIFICANT = 0.25
# An empty bin would make ln(0); a small floor keeps PSI finite and barely moves it.
_EPSILON = 1e-4
# Served rows are buffered and binned in batches: appending an array costs nothing on the
# request path, binning 30 features is done once per batch or scrape.
_FLUSH_ROWS = 4096
# ... and at least once a second, so a rollout's window of a few seconds sees its rows.
_FLUSH_S = 1.0
# A large request adds an evenly spaced sample of its rows: ten bins need a few hundred rows
# in all, and binning every row of 1000-row requests cost more than the prediction itself.
SAMPLE_ROWS = 100


def sample_rows(rows: np.ndarray) -> np.ndarray:
    """At most ``SAMPLE_ROWS`` of ``rows``, evenly strided.

    The sample every served-input and probability signal counts, locally and in the cluster's
    payload sink alike.
    """
    return rows[:: _stride(len(rows))]


def _stride(rows: int) -> int:
    return max(1, -(-rows // SAMPLE_ROWS))


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


def numeric_features(
    feature_names: list[str],
    feature_types: Mapping[str, str] | None,
    reference: Mapping[str, Any] | None = None,
) -> list[str]:
    """The features drift is measured on: the numeric ones (all, for an older version).

    A categorical feature (``feature_types``, or listed under the reference's ``categorical``)
    has no bins: ``reference_statistics.categorical`` holds its shares instead.
    """
    types = feature_types or {}
    categorical = (reference or {}).get("categorical") or {}
    return [
        name
        for name in feature_names
        if types.get(name, "numeric") == "numeric" and name not in categorical
    ]


class DriftMonitor:
    """Counts served rows in the reference bins of every numeric feature; thread-safe."""

    def __init__(
        self,
        feature_names: list[str],
        reference: dict[str, Any],
        labels: tuple[str, str, str] | None = None,
        feature_types: Mapping[str, str] | None = None,
    ) -> None:
        """Set up the bins.

        Args:
            feature_names: The model's features, in column order.
            reference: ``reference_statistics`` from the model's metadata.
            labels: ``(model, revision, model_version)`` of the ``mlops_input_bin_rows``
                counters; ``None`` counts in this object only.
            feature_types: ``feature_types`` from the model's metadata (``numeric`` or
                ``categorical`` per feature); absent, every feature not under the reference's
                ``categorical`` is numeric. Only numeric features are monitored.

        Raises:
            ValueError: When a numeric feature has no reference statistics.
        """
        features = reference.get("features", {})
        monitored = numeric_features(list(feature_names), feature_types, reference)
        missing = [name for name in monitored if name not in features]
        if missing:
            raise ValueError(f"reference_statistics has no entry for features {missing[:3]}")
        self.feature_names = monitored
        # Where each monitored feature sits among the model's columns (a served matrix).
        self._columns = [list(feature_names).index(name) for name in monitored]
        self._every_column = self._columns == list(range(len(feature_names)))
        self._edges = [np.asarray(features[n]["bin_edges"], dtype=float) for n in monitored]
        self._fractions = [np.asarray(features[n]["bin_fractions"], dtype=float) for n in monitored]
        self._reference_means = [float(features[n]["mean"]) for n in monitored]
        self._counts = [np.zeros(len(f), dtype=np.int64) for f in self._fractions]
        self._sums = np.zeros(len(monitored))
        self._present = np.zeros(len(monitored), dtype=np.int64)
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._flushed_at = time.monotonic()
        self._lock = threading.Lock()
        self.labels = labels
        self._counters = (
            [
                [INPUT_BINS.labels(*labels, name, str(b)) for b in range(len(fractions))]
                for name, fractions in zip(monitored, self._fractions, strict=True)
            ]
            if labels
            else None
        )

    def observe(self, rows: Any) -> None:
        """Record served rows; at most ``SAMPLE_ROWS`` of them.

        Args:
            rows: Validated rows: a ``[rows, features]`` array in the model's column order, or
                a DataFrame with the model's columns (a mixed table). Only the numeric
                features are read; a missing value (NaN) is counted in no bin.
        """
        if hasattr(rows, "iloc"):  # a DataFrame: its numeric columns, by name
            matrix = rows[self.feature_names].iloc[:: _stride(len(rows))].to_numpy(dtype=float)
        else:
            matrix = sample_rows(np.asarray(rows))
            if not self._every_column:
                matrix = matrix[:, self._columns].astype(float)
        with self._lock:
            self._pending.append(matrix)
            self._pending_rows += len(matrix)
            if self._pending_rows >= _FLUSH_ROWS or time.monotonic() - self._flushed_at > _FLUSH_S:
                self._flush()

    def flush(self) -> None:
        """Count the rows held back so far; the router's watcher calls it every poll.

        Without it, the last rows a worker served would wait for that worker's next request
        before any other worker (the one a scrape lands on) could count them.
        """
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        self._flushed_at = time.monotonic()
        if not self._pending:
            return
        batch = np.concatenate(self._pending)
        self._pending, self._pending_rows = [], 0
        present = ~np.isnan(batch)
        for column, edges in enumerate(self._edges):
            counts = bin_counts(edges, batch[present[:, column], column])
            self._counts[column] += counts
            if self._counters is not None:
                for counter, count in zip(self._counters[column], counts.tolist(), strict=True):
                    if count:
                        counter.inc(count)
        self._sums += np.nansum(batch, axis=0)
        self._present += present.sum(axis=0)

    @property
    def rows(self) -> int:
        """Rows the statistics cover (large requests contribute a sample), in every worker."""
        with self._lock:
            self._flush()
            counts = self._all_workers_counts()
            # The feature seen most often: a missing value is counted in no bin.
            return max((int(c.sum()) for c in counts), default=0)

    def _all_workers_counts(self) -> list[np.ndarray]:
        """Bin counts per feature: this process's, or every worker's when multiprocess."""
        if self.labels is None or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return [c.copy() for c in self._counts]
        return multiprocess_bin_counts(self.labels, self.feature_names, self._fractions)

    def report(self) -> list[FeatureDrift]:
        """PSI per feature over the rows served so far, in feature order.

        The served mean covers this process's rows only (means do not add up as counters do).
        """
        with self._lock:
            self._flush()
            counts = self._all_workers_counts()
            return [
                FeatureDrift(
                    feature=name,
                    psi=psi(self._fractions[i], counts[i]),
                    served_mean=float(self._sums[i] / max(int(self._present[i]), 1)),
                    reference_mean=self._reference_means[i],
                )
                for i, name in enumerate(self.feature_names)
            ]


def multiprocess_bin_counts(
    labels: tuple[str, str, str], feature_names: list[str], fractions: list[np.ndarray]
) -> list[np.ndarray]:
    """``mlops_input_bin_rows_total`` of one revision, summed over every worker's files.

    Reads ``PROMETHEUS_MULTIPROC_DIR`` through ``prometheus_client``'s
    ``MultiProcessCollector``, which adds up the counters the worker processes wrote.
    """
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    column = {name: i for i, name in enumerate(feature_names)}
    counts = [np.zeros(len(f), dtype=np.int64) for f in fractions]
    for metric in MultiProcessCollector(CollectorRegistry(auto_describe=False)).collect():
        if metric.name != "mlops_input_bin_rows":
            continue
        for sample in metric.samples:
            found = sample.labels
            if (found.get("model"), found.get("revision"), found.get("model_version")) != labels:
                continue
            i, b = column.get(found.get("feature", "")), int(found.get("bin", -1))
            if i is not None and 0 <= b < len(counts[i]):
                counts[i][b] += int(sample.value)
    return counts
