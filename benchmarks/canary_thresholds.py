"""How the canary signals vary between two good models, and how far a degraded one moves them.

    .venv/bin/python benchmarks/canary_thresholds.py [--trials 300] [--canary-rows 50]

Trains, as ``mlops run`` does (``mlops.training.fit_classifier``, the default logistic
regression), a stable model, a second good model (another seed) and a degraded one
(``--label-noise 0.5``). Each trial draws a window of real breast-cancer rows: ``canary-rows``
for the canary and nine times as many for the stable, as a 10% canary sees, and computes the
model signals of ``serving.canary_analysis`` on it. It prints the median, 99th percentile and
worst of each signal, good-vs-good and degraded-vs-good, next to the default threshold: the
defaults must sit well outside the good spread and inside the degraded one.
"""

from __future__ import annotations

import argparse

import numpy as np

from mlops.data import load_table
from mlops.training import fit_classifier
from mlops.validation import bin_counts, reference_statistics
from serving.canary_analysis import (
    PROBABILITY_BUCKETS,
    RevisionCounts,
    Thresholds,
    judge,
    reference_fractions,
)


def counts(model: object, rows: np.ndarray, reference: dict[str, object]) -> RevisionCounts:
    """What the server would count for ``rows`` answered by ``model``."""
    predicted = model.predict(rows)  # type: ignore[attr-defined]
    top = model.predict_proba(rows).max(axis=1)  # type: ignore[attr-defined]
    result = RevisionCounts(requests=float(len(rows)))
    values, n = np.unique(predicted, return_counts=True)
    result.classes = {str(v): float(c) for v, c in zip(values.tolist(), n.tolist(), strict=True)}
    result.probability_buckets = {b: float((top <= b).sum()) for b in PROBABILITY_BUCKETS}
    features = reference["features"]  # type: ignore[index]
    for i, (name, stats) in enumerate(features.items()):
        binned = bin_counts(np.asarray(stats["bin_edges"]), rows[:, i])
        result.input_bins[name] = {str(b): float(c) for b, c in enumerate(binned.tolist())}
    return result


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--canary-rows", type=int, default=50)
    args = parser.parse_args()
    frame = load_table("sklearn:breast_cancer")
    rows = frame.drop(columns=["target"]).to_numpy(dtype=float)
    params = {"C": 1.0, "max_iter": 1000}
    stable = fit_classifier(frame, "target", "logistic_regression", params, 42)
    good = fit_classifier(
        frame.sample(frac=0.8, random_state=7), "target", "logistic_regression", params, 7
    )
    noisy = frame.copy()
    rng = np.random.default_rng(0)
    flip = rng.random(len(noisy)) < 0.5
    noisy.loc[flip, "target"] = 1 - noisy.loc[flip, "target"]
    degraded = fit_classifier(noisy, "target", "logistic_regression", params, 42)
    reference = reference_statistics(frame, "target")
    fractions = reference_fractions({"reference_statistics": reference})
    thresholds = Thresholds()
    figures: dict[str, dict[str, list[float]]] = {"good": {}, "degraded": {}}
    for trial in range(args.trials):
        pick = np.random.default_rng(trial)
        canary_rows = rows[pick.integers(0, len(rows), args.canary_rows)]
        stable_rows = rows[pick.integers(0, len(rows), 9 * args.canary_rows)]
        base = counts(stable, stable_rows, reference)
        for kind, model in (("good", good), ("degraded", degraded)):
            canary = counts(model, canary_rows, reference)
            agreed = float((model.predict(stable_rows) == stable.predict(stable_rows)).mean())
            canary.shadow = {"agreed": agreed * 100, "disagreed": (1 - agreed) * 100}
            verdict = judge(base, canary, fractions, thresholds)
            for signal in verdict.signals:
                if signal.value is not None:
                    figures[kind].setdefault(signal.name, []).append(signal.value)
    bounds = {s.name: s.threshold for s in verdict.signals}
    print(f"{args.trials} windows of {args.canary_rows} canary rows vs {9 * args.canary_rows}")
    print(f"{'signal':<24}{'kind':<10}{'median':>9}{'p99/p1':>9}{'worst':>9}{'default':>9}")
    for name in bounds:
        for kind in ("good", "degraded"):
            values = np.asarray(figures[kind].get(name, [np.nan]))
            low = name == "shadow_agreement"
            tail = np.percentile(values, 1 if low else 99)
            worst = values.min() if low else values.max()
            print(
                f"{name:<24}{kind:<10}{np.median(values):>9.3f}{tail:>9.3f}{worst:>9.3f}"
                f"{bounds[name]:>9.3f}"
            )


if __name__ == "__main__":
    main()
