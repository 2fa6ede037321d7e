"""Canary analysis: read the serving metrics, take a window, judge the canary against the stable.

The rollout judges on numbers read from Prometheus text exposition (what ``/metrics`` serves),
so one parser serves the local server (one process, or several in Prometheus multiprocess
mode, whose counters add up) and a cluster. The families, all labelled ``model``,
``revision``, ``model_version``:

- ``mlops_inference_requests_total{code}`` and the histogram
  ``mlops_inference_request_duration_seconds``: service health;
- ``mlops_predictions_total{predicted_class}``: rows per predicted class;
- the histogram ``mlops_prediction_probability``: the predicted class's probability per row;
- ``mlops_input_bin_rows_total{feature,bin}``: served rows per training-reference bin;
- ``mlops_shadow_requests_total{outcome}``: mirrored requests, labelled with the canary
  (shadow) revision, ``agreed|disagreed|failed|dropped``; ``mlops_shadow_rows_total{outcome}``
  the rows of those compared, ``agreed|disagreed`` (agreement is judged per row).

Everything here is a pure function of those counts: ``parse_exposition`` -> ``Snapshot``,
``window(before, after)`` -> the counts of one step, ``judge(stable, canary, reference,
thresholds)`` -> ``Verdict``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

REQUESTS = "mlops_inference_requests"
LATENCY = "mlops_inference_request_duration_seconds"
PREDICTIONS = "mlops_predictions"
PROBABILITY = "mlops_prediction_probability"
INPUT_BINS = "mlops_input_bin_rows"
SHADOW = "mlops_shadow_requests"
SHADOW_ROWS = "mlops_shadow_rows"
SHADOW_OUTCOMES = ("agreed", "disagreed", "failed", "dropped")
# Upper bounds of the probability histogram: the predicted class's probability is >= 1/classes.
PROBABILITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# Predicted classes outside the model's own classes all count under this one label.
OTHER_CLASS = "_other"

PROMOTE_STEP = "promote-step"
HOLD = "hold"
ROLLBACK = "rollback"


@dataclass
class RevisionCounts:
    """Cumulative (or, after ``window``, per-window) counts of one revision.

    Attributes:
        model_version: The store version the revision serves.
        requests: Inference requests answered, any status.
        errors_5xx: Of those, answered with a 5xx status.
        latency_buckets: Requests per latency bucket, cumulative by upper bound in seconds
            (``le``, ``inf`` included), as Prometheus histograms count them.
        classes: Predicted rows per class label.
        probability_buckets: Rows per predicted-class-probability bucket, cumulative.
        input_bins: Served rows per feature per training-reference bin index.
        shadow: Mirrored requests per outcome (``agreed``, ``disagreed``, ``failed``,
            ``dropped``); counted on the canary (the revision the requests were mirrored to).
        shadow_rows: Rows of the compared mirrored requests, ``agreed``/``disagreed``.
    """

    model_version: str = ""
    requests: float = 0.0
    errors_5xx: float = 0.0
    latency_buckets: dict[float, float] = field(default_factory=dict)
    classes: dict[str, float] = field(default_factory=dict)
    probability_buckets: dict[float, float] = field(default_factory=dict)
    input_bins: dict[str, dict[str, float]] = field(default_factory=dict)
    shadow: dict[str, float] = field(default_factory=dict)
    shadow_rows: dict[str, float] = field(default_factory=dict)


@dataclass
class Snapshot:
    """Counts per revision name of one model, at one moment (or over one window).

    Attributes:
        revisions: ``RevisionCounts`` per revision name.
        resets: Revisions whose counters went down between two snapshots: the server restarted
            (or a worker did), so the window holds only what was counted since.
    """

    revisions: dict[str, RevisionCounts] = field(default_factory=dict)
    resets: list[str] = field(default_factory=list)

    def get(self, revision: str) -> RevisionCounts:
        """The counts of ``revision`` (empty when it served nothing)."""
        return self.revisions.get(revision) or RevisionCounts()


def parse_exposition(text: str, model: str) -> Snapshot:
    """Read the canary-signal families of ``model`` from Prometheus text exposition.

    Args:
        text: What ``/metrics`` answered.
        model: The model (InferenceService) name; other models' samples are ignored.

    Returns:
        Cumulative counts per revision.

    Raises:
        ValueError: When the text is not Prometheus exposition.
    """
    from prometheus_client.parser import text_string_to_metric_families

    snapshot = Snapshot()
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as err:  # the parser raises several types on junk
        raise ValueError(f"the metrics are not Prometheus text exposition: {err}") from err
    for family in families:
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != model or "revision" not in labels:
                continue
            counts = snapshot.revisions.setdefault(labels["revision"], RevisionCounts())
            counts.model_version = labels.get("model_version", counts.model_version)
            _add_sample(counts, sample.name, labels, float(sample.value))
    return snapshot


def _add_sample(counts: RevisionCounts, name: str, labels: Mapping[str, str], value: float) -> None:
    if name == f"{REQUESTS}_total":
        counts.requests += value
        if labels.get("code", "").startswith("5"):
            counts.errors_5xx += value
    elif name == f"{LATENCY}_bucket":
        bound = float(labels["le"])
        counts.latency_buckets[bound] = counts.latency_buckets.get(bound, 0.0) + value
    elif name == f"{PREDICTIONS}_total":
        label = labels.get("predicted_class", OTHER_CLASS)
        counts.classes[label] = counts.classes.get(label, 0.0) + value
    elif name == f"{PROBABILITY}_bucket":
        bound = float(labels["le"])
        counts.probability_buckets[bound] = counts.probability_buckets.get(bound, 0.0) + value
    elif name == f"{INPUT_BINS}_total":
        bins = counts.input_bins.setdefault(labels.get("feature", ""), {})
        bins[labels.get("bin", "")] = bins.get(labels.get("bin", ""), 0.0) + value
    elif name == f"{SHADOW}_total":
        outcome = labels.get("outcome", "")
        counts.shadow[outcome] = counts.shadow.get(outcome, 0.0) + value
    elif name == f"{SHADOW_ROWS}_total":
        outcome = labels.get("outcome", "")
        counts.shadow_rows[outcome] = counts.shadow_rows.get(outcome, 0.0) + value


def _minus(after: dict[Any, Any], before: dict[Any, Any]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for key, value in after.items():
        if isinstance(value, dict):
            out[key] = _minus(value, before.get(key, {}))
        else:
            out[key] = value - before.get(key, 0.0)
    return out


def _went_down(after: dict[Any, Any], before: dict[Any, Any]) -> bool:
    for key, value in before.items():
        if isinstance(value, dict):
            if _went_down(after.get(key, {}), value):
                return True
        elif after.get(key, 0.0) < value:
            return True
    return False


def window(before: Snapshot, after: Snapshot) -> Snapshot:
    """The counts between two snapshots of the same server(s).

    A counter that went down means the process that held it restarted: the revision's window
    is then ``after`` alone (what was counted since the restart), and the revision is listed
    in ``resets`` so the caller can say so.

    Args:
        before: The snapshot at the start of the window.
        after: The snapshot at its end.

    Returns:
        Per-window counts per revision.
    """
    result = Snapshot()
    for revision, now in after.revisions.items():
        then = before.revisions.get(revision)
        if then is None:
            result.revisions[revision] = replace(now)
            continue
        scalars_down = now.requests < then.requests or now.errors_5xx < then.errors_5xx
        maps = [f.name for f in fields(RevisionCounts) if isinstance(getattr(now, f.name), dict)]
        if scalars_down or any(_went_down(getattr(now, m), getattr(then, m)) for m in maps):
            result.resets.append(revision)
            result.revisions[revision] = replace(now)
            continue
        diffs = {m: _minus(getattr(now, m), getattr(then, m)) for m in maps}
        result.revisions[revision] = RevisionCounts(
            model_version=now.model_version,
            requests=now.requests - then.requests,
            errors_5xx=now.errors_5xx - then.errors_5xx,
            **diffs,
        )
    return result


def quantile(buckets: Mapping[float, float], q: float) -> float | None:
    """The ``q`` quantile of a cumulative histogram, interpolated as PromQL's histogram_quantile.

    Returns:
        Seconds (or the bucket unit); ``None`` when the histogram is empty. Above the highest
        finite bound the answer is that bound (Prometheus does the same).
    """
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _fractions(counts: Sequence[float], smoothing: float) -> list[float]:
    smoothed = [max(c, 0.0) + smoothing for c in counts]
    total = sum(smoothed)
    return [c / total for c in smoothed] if total > 0 else [1.0 / len(counts)] * len(counts)


def jensen_shannon(p_counts: Sequence[float], q_counts: Sequence[float], smoothing: float) -> float:
    """Jensen-Shannon divergence (base 2: 0 identical .. 1 disjoint) of two count vectors.

    ``smoothing`` is added to every count first (additive, Laplace-style), so a class that one
    small window happened not to see does not count as a difference by itself.
    """
    p = _fractions(p_counts, smoothing)
    q = _fractions(q_counts, smoothing)
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]

    def kl(x: list[float]) -> float:
        return sum(a * math.log2(a / b) for a, b in zip(x, m, strict=True) if a > 0)

    return max(0.0, (kl(p) + kl(q)) / 2)


def psi(
    reference_fractions: Sequence[float], counts: Sequence[float], smoothing: float = 0.5
) -> float:
    """Population stability index of served bin counts against reference fractions.

    Small windows need two corrections. ``smoothing`` is added to every served count first: a
    bin that 50 rows happened to miss would otherwise count as a share of 0 (floored), and one
    such bin of a 10% reference share alone adds 0.69. Then the expected PSI of a sample drawn
    from the reference itself, about ``(bins - 1) / n``, is subtracted: 0.18 for 50 rows over
    10 bins, past the usual "moderate" 0.1 with no drift at all.
    """
    n = sum(counts)
    if n <= 0:
        return 0.0
    served = _fractions(counts, smoothing)
    reference = [max(f, 1e-4) for f in reference_fractions]
    value = sum((s - r) * math.log(s / r) for s, r in zip(served, reference, strict=True))
    return max(0.0, value - (len(counts) - 1) / n)


def _per_bucket(cumulative: Mapping[float, float], bounds: Sequence[float]) -> list[float]:
    values, below = [], 0.0
    for bound in bounds:
        count = cumulative.get(bound, below)
        values.append(count - below)
        below = count
    return values


@dataclass(frozen=True)
class Thresholds:
    """When a canary fails, each with its default and why (the README repeats them).

    Attributes:
        min_requests: Canary requests a window needs before it is judged; fewer means hold.
            50: at 10% of a few requests a second a 5 s step sees only a few dozen.
        max_holds: Holds in a row at one step before the rollout gives up and rolls back
            ("not enough traffic"): an unverified canary is never promoted.
        max_error_rate_increase: Canary 5xx rate minus stable 5xx rate. 0.01: a good canary
            answers no 5xx on a healthy stable; one 5xx in 50 (0.02) already fails.
        max_p99_ratio: Canary p99 latency over stable p99. 2.0: good-vs-good on a shared
            2-core machine moved up to 1.5x; an injected 200 ms delay gives tens of times.
        min_p99_increase_s: A slower p99 fails only when it is also this much slower in
            absolute terms (0.025 s), so a 2 ms -> 5 ms jitter of a tiny window is not a failure.
        max_class_divergence: Jensen-Shannon divergence (base 2) of the predicted-class
            distributions. 0.05: two good models on windows of 50 vs 450 real rows measured
            p99 0.026, worst 0.035 (``benchmarks/canary_thresholds.py``). A model trained on
            half-flipped labels predicts the classes in about the same shares (0.002 median),
            so this signal catches a model that shifts classes, not that one.
        max_probability_divergence: Jensen-Shannon divergence of the predicted class's
            probability histograms (10 buckets). 0.15: good-vs-good measured p99 0.050, worst
            0.067; the half-flipped-labels model 0.83 (it is unsure of everything).
        max_input_psi: Largest per-feature PSI of the canary's inputs against its training
            reference, after the small-sample corrections. 0.25: the usual "significant shift";
            good traffic over 200 rows measured p99 0.11.
        min_drift_rows: Canary rows a window needs before input drift is judged (200): the
            largest of 30 features' PSI on 50 rows of undrifted traffic measured p99 0.41, pure
            noise, so smaller windows report it without judging it.
        min_shadow_agreement: Share of mirrored rows whose labels equal the stable's.
            0.9: two good models agreed on >= 98.7% of rows in every window measured; the
            half-flipped-labels model on at most 71%.
        min_shadow_requests: Compared mirrored requests needed to judge agreement (20);
            fewer and the signal is reported but not judged.
        min_class_share_ratio: Each class the stable predicts must keep at least this share
            of its stable share in the canary's predictions (0.5). A canary that stops
            predicting a minority class (a majority-only model on 3% positives) moves the
            class divergence by 0.02 only; this catches it. A class fails only when so few of
            it are also improbable (binomial tail below ``CLASS_SHARE_ALPHA``) under the
            stable's share, so a small window's chance dip is no failure; a window too small
            to tell for some class the stable predicts is reported, not judged.
        smoothing: Added to every class/bucket count before the divergences (0.5, Jeffreys).
    """

    min_requests: int = 50
    max_holds: int = 3
    max_error_rate_increase: float = 0.01
    max_p99_ratio: float = 2.0
    min_p99_increase_s: float = 0.025
    max_class_divergence: float = 0.05
    max_probability_divergence: float = 0.15
    max_input_psi: float = 0.25
    min_drift_rows: int = 200
    min_shadow_agreement: float = 0.9
    min_shadow_requests: int = 20
    smoothing: float = 0.5
    min_class_share_ratio: float = 0.5

    def __post_init__(self) -> None:
        """Refuse values outside their ranges, naming the field."""
        checks = {
            "min_requests": self.min_requests >= 1,
            "max_holds": self.max_holds >= 0,
            "max_error_rate_increase": 0 <= self.max_error_rate_increase <= 1,
            "max_p99_ratio": self.max_p99_ratio >= 1,
            "min_p99_increase_s": self.min_p99_increase_s >= 0,
            "max_class_divergence": 0 <= self.max_class_divergence <= 1,
            "max_probability_divergence": 0 <= self.max_probability_divergence <= 1,
            "max_input_psi": self.max_input_psi >= 0,
            "min_drift_rows": self.min_drift_rows >= 1,
            "min_shadow_agreement": 0 <= self.min_shadow_agreement <= 1,
            "min_shadow_requests": self.min_shadow_requests >= 1,
            "smoothing": self.smoothing > 0,
            "min_class_share_ratio": 0 <= self.min_class_share_ratio <= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"threshold {bad[0]}={getattr(self, bad[0])!r} is out of range: error rates, "
                "divergences and agreement lie in [0, 1], the p99 ratio is >= 1, counts >= 1"
            )


@dataclass(frozen=True)
class Signal:
    """One signal of one window.

    Attributes:
        name: ``error_rate``, ``p99_latency``, ``class_divergence``, ``class_share``,
            ``probability_divergence``, ``input_drift`` or ``shadow_agreement``.
        value: The figure compared with the threshold (``None``: no data to judge).
        threshold: The bound it is compared with.
        passed: ``True``/``False``; ``None`` when not judged (too little data).
        detail: The figures behind it, in words.
    """

    name: str
    value: float | None
    threshold: float
    passed: bool | None
    detail: str


@dataclass(frozen=True)
class Verdict:
    """The decision on one window.

    Attributes:
        decision: ``promote-step``, ``hold`` or ``rollback``.
        signals: Every signal, judged or not.
        canary_requests: Canary requests in the window.
        stable_requests: Stable requests in the window.
        reason: One line: why this decision.
    """

    decision: str
    signals: tuple[Signal, ...]
    canary_requests: float
    stable_requests: float
    reason: str

    @property
    def failing(self) -> list[str]:
        """Names of the signals that failed."""
        return [s.name for s in self.signals if s.passed is False]


def _error_signal(stable: RevisionCounts, canary: RevisionCounts, t: Thresholds) -> Signal:
    canary_rate = canary.errors_5xx / canary.requests if canary.requests else 0.0
    stable_rate = stable.errors_5xx / stable.requests if stable.requests else 0.0
    increase = canary_rate - stable_rate
    return Signal(
        "error_rate",
        increase,
        t.max_error_rate_increase,
        increase <= t.max_error_rate_increase,
        f"5xx canary {canary_rate:.3f} ({canary.errors_5xx:.0f}/{canary.requests:.0f}), "
        f"stable {stable_rate:.3f}",
    )


def _latency_signal(stable: RevisionCounts, canary: RevisionCounts, t: Thresholds) -> Signal:
    canary_p99 = quantile(canary.latency_buckets, 0.99)
    stable_p99 = quantile(stable.latency_buckets, 0.99)
    if canary_p99 is None or stable_p99 is None:
        return Signal("p99_latency", None, t.max_p99_ratio, None, "no latency observed")
    ratio = canary_p99 / stable_p99 if stable_p99 > 0 else (math.inf if canary_p99 > 0 else 1.0)
    slower = ratio > t.max_p99_ratio and canary_p99 - stable_p99 > t.min_p99_increase_s
    return Signal(
        "p99_latency",
        ratio,
        t.max_p99_ratio,
        not slower,
        f"p99 canary {canary_p99 * 1000:.1f} ms, stable {stable_p99 * 1000:.1f} ms",
    )


def _class_signal(stable: RevisionCounts, canary: RevisionCounts, t: Thresholds) -> Signal:
    labels = sorted(set(stable.classes) | set(canary.classes))
    if not labels or not sum(canary.classes.values()) or not sum(stable.classes.values()):
        return Signal("class_divergence", None, t.max_class_divergence, None, "no predictions")
    canary_counts = [canary.classes.get(c, 0.0) for c in labels]
    stable_counts = [stable.classes.get(c, 0.0) for c in labels]
    value = jensen_shannon(canary_counts, stable_counts, t.smoothing)
    shares = ", ".join(
        f"{c}: {canary.classes.get(c, 0) / sum(canary_counts):.2f} vs "
        f"{stable.classes.get(c, 0) / sum(stable_counts):.2f}"
        for c in labels
    )
    return Signal(
        "class_divergence",
        value,
        t.max_class_divergence,
        value <= t.max_class_divergence,
        f"JS {value:.3f}; class shares canary vs stable {shares}",
    )


# How improbable a canary's count of a class must be under the stable's share to count as a
# collapse: 1 in 1000 per class per window, so six classes over ten windows rarely misfire.
CLASS_SHARE_ALPHA = 0.001
# Classes the stable predicts this rarely (or on fewer rows) are not judged: too rare to tell.
MIN_STABLE_CLASS_SHARE = 0.01
MIN_STABLE_CLASS_ROWS = 5


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(K <= k) for K ~ Binomial(n, p), summed in log space (n in the thousands is fine)."""
    if k >= n or p <= 0:
        return 1.0
    if p >= 1:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    log_n = math.lgamma(n + 1)
    terms = [
        log_n - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        for i in range(max(k, 0) + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def _class_share_signal(stable: RevisionCounts, canary: RevisionCounts, t: Thresholds) -> Signal:
    stable_total = sum(stable.classes.values())
    canary_rows = round(sum(canary.classes.values()))
    if not stable_total or not canary_rows:
        return Signal("class_share", None, t.min_class_share_ratio, None, "no predictions")
    worst, worst_class, collapsed, untestable = math.inf, "", [], []
    for label, count in sorted(stable.classes.items()):
        share = count / stable_total
        if share < MIN_STABLE_CLASS_SHARE or count < MIN_STABLE_CLASS_ROWS:
            continue
        seen = round(canary.classes.get(label, 0.0))
        ratio = (seen / canary_rows) / share
        if ratio < worst:
            worst, worst_class = ratio, label
        if binomial_cdf(0, canary_rows, share) >= CLASS_SHARE_ALPHA:
            untestable.append(label)  # even none of it would not be improbable yet
        elif ratio < t.min_class_share_ratio and binomial_cdf(seen, canary_rows, share) < (
            CLASS_SHARE_ALPHA
        ):
            collapsed.append(f"{label}: {seen}/{canary_rows} rows, stable share {share:.3f}")
    if worst_class == "":
        return Signal("class_share", None, t.min_class_share_ratio, None, "no class to judge")
    detail = f"lowest canary/stable class share ratio {worst:.2f} ({worst_class})"
    if collapsed:
        return Signal(
            "class_share", worst, t.min_class_share_ratio, False,
            f"{detail}; collapsed: {'; '.join(collapsed)}",
        )  # fmt: skip
    if untestable:
        detail += f" (too few canary rows to judge {', '.join(untestable)})"
        return Signal("class_share", worst, t.min_class_share_ratio, None, detail)
    return Signal("class_share", worst, t.min_class_share_ratio, True, detail)


def _probability_signal(stable: RevisionCounts, canary: RevisionCounts, t: Thresholds) -> Signal:
    bounds = sorted(set(stable.probability_buckets) | set(canary.probability_buckets))
    canary_counts = _per_bucket(canary.probability_buckets, bounds)
    stable_counts = _per_bucket(stable.probability_buckets, bounds)
    if not sum(canary_counts) or not sum(stable_counts):
        return Signal(
            "probability_divergence", None, t.max_probability_divergence, None, "no probabilities"
        )
    value = jensen_shannon(canary_counts, stable_counts, t.smoothing)
    canary_median = quantile(canary.probability_buckets, 0.5) or 0.0
    stable_median = quantile(stable.probability_buckets, 0.5) or 0.0
    return Signal(
        "probability_divergence",
        value,
        t.max_probability_divergence,
        value <= t.max_probability_divergence,
        f"JS {value:.3f}; median confidence canary {canary_median:.2f}, stable {stable_median:.2f}",
    )


def _input_signal(
    canary: RevisionCounts, reference: Mapping[str, Sequence[float]] | None, t: Thresholds
) -> Signal:
    if not reference or not canary.input_bins:
        return Signal("input_drift", None, t.max_input_psi, None, "no input bins or reference")
    worst, worst_feature, rows = 0.0, "", 0.0
    for feature, fractions in reference.items():
        bins = canary.input_bins.get(feature)
        if not bins:
            continue
        counts = [bins.get(str(i), 0.0) for i in range(len(fractions))]
        rows = max(rows, sum(counts))
        value = psi(fractions, counts, t.smoothing)
        if value >= worst:
            worst, worst_feature = value, feature
    detail = (
        f"max PSI {worst:.3f} ({worst_feature or 'no feature'}) over {rows:.0f} rows vs the "
        "canary's training data"
    )
    if rows < t.min_drift_rows:
        return Signal("input_drift", worst, t.max_input_psi, None, f"{detail} (too few to judge)")
    return Signal("input_drift", worst, t.max_input_psi, worst <= t.max_input_psi, detail)


def _shadow_signal(canary: RevisionCounts, t: Thresholds) -> Signal:
    agreed = canary.shadow.get("agreed", 0.0)
    disagreed = canary.shadow.get("disagreed", 0.0)
    failed = canary.shadow.get("failed", 0.0)
    compared = agreed + disagreed + failed
    agreed_rows = canary.shadow_rows.get("agreed", 0.0)
    rows = agreed_rows + canary.shadow_rows.get("disagreed", 0.0)
    detail = (
        f"{agreed_rows:.0f}/{rows:.0f} mirrored rows agreed; requests {agreed:.0f} agreed, "
        f"{disagreed:.0f} disagreed, {failed:.0f} failed, "
        f"{canary.shadow.get('dropped', 0.0):.0f} dropped"
    )
    # Per row, a request the canary failed counting as one disagreeing row; without row
    # counts (another server), per request.
    value: float | None
    if rows:
        value = agreed_rows / (rows + failed)
    else:
        value = agreed / compared if compared else None
    if compared < t.min_shadow_requests or value is None:
        return Signal("shadow_agreement", value, t.min_shadow_agreement, None, detail)
    return Signal(
        "shadow_agreement", value, t.min_shadow_agreement, value >= t.min_shadow_agreement, detail
    )


def judge(
    stable: RevisionCounts,
    canary: RevisionCounts,
    reference: Mapping[str, Sequence[float]] | None,
    thresholds: Thresholds,
) -> Verdict:
    """Decide on one window: step up, hold for more traffic, or roll back.

    A window with fewer than ``min_requests`` canary requests is held, unless some signal has
    already failed on it (a canary answering 5xx to 10 requests needs no 40 more); otherwise
    any failed signal rolls back and none failing steps up. A signal without enough data is
    reported, not judged.

    Args:
        stable: The stable revision's counts over the window.
        canary: The canary's counts over the same window.
        reference: The canary's training reference: bin fractions per feature
            (``reference_statistics.features[f].bin_fractions`` of its ``metadata.json``).
        thresholds: The bounds.

    Returns:
        The verdict, with every signal's figures.
    """
    signals = (
        _error_signal(stable, canary, thresholds),
        _latency_signal(stable, canary, thresholds),
        _class_signal(stable, canary, thresholds),
        _class_share_signal(stable, canary, thresholds),
        _probability_signal(stable, canary, thresholds),
        _input_signal(canary, reference, thresholds),
        _shadow_signal(canary, thresholds),
    )
    failed = [s for s in signals if s.passed is False]
    enough = canary.requests >= thresholds.min_requests
    # Few requests make the model signals noisy; the service signals are clear on few.
    hard = [s for s in failed if s.name in ("error_rate", "p99_latency", "shadow_agreement")]
    if failed and (enough or hard):
        chosen = failed if enough else hard
        reason = "; ".join(
            f"{s.name} {_fmt(s.value)} beyond {_fmt(s.threshold)} ({s.detail})" for s in chosen
        )
        return Verdict(ROLLBACK, signals, canary.requests, stable.requests, reason)
    if not enough:
        reason = (
            f"{canary.requests:.0f} canary requests in the window, "
            f"{thresholds.min_requests} needed to judge"
        )
        return Verdict(HOLD, signals, canary.requests, stable.requests, reason)
    return Verdict(
        PROMOTE_STEP, signals, canary.requests, stable.requests, "every signal within bounds"
    )


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"


def reference_fractions(metadata: Mapping[str, Any]) -> dict[str, list[float]]:
    """Bin fractions per feature from a version's ``metadata.json`` (empty when it has none)."""
    features = (metadata.get("reference_statistics") or {}).get("features") or {}
    return {
        name: [float(f) for f in stats.get("bin_fractions", [])]
        for name, stats in features.items()
        if stats.get("bin_fractions")
    }
