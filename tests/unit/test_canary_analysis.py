"""The canary analysis: parsing /metrics, windows, every signal and every decision."""

from __future__ import annotations

from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from serving.canary_analysis import (
    HOLD,
    PROBABILITY_BUCKETS,
    PROMOTE_STEP,
    ROLLBACK,
    RevisionCounts,
    Snapshot,
    Thresholds,
    jensen_shannon,
    judge,
    parse_exposition,
    psi,
    quantile,
    reference_fractions,
    window,
)

LABELS = ("model", "revision", "model_version")
REFERENCE = {"f": [0.1] * 10}


def exposition(requests: int, errors: int = 0, model: str = "m") -> str:
    """Real exposition text, written by prometheus_client as the server writes it."""
    registry = CollectorRegistry()
    total = Counter("mlops_inference_requests", "r", [*LABELS, "code"], registry=registry)
    latency = Histogram(
        "mlops_inference_request_duration_seconds",
        "l",
        LABELS,
        registry=registry,
        buckets=(0.005, 0.01, 0.1, 1.0),
    )
    classes = Counter("mlops_predictions", "p", [*LABELS, "predicted_class"], registry=registry)
    probability = Histogram(
        "mlops_prediction_probability",
        "p",
        LABELS,
        registry=registry,
        buckets=PROBABILITY_BUCKETS,
    )
    bins = Counter("mlops_input_bin_rows", "b", [*LABELS, "feature", "bin"], registry=registry)
    shadow = Counter("mlops_shadow_requests", "s", [*LABELS, "outcome"], registry=registry)
    shadow_rows = Counter("mlops_shadow_rows", "s", [*LABELS, "outcome"], registry=registry)
    for revision, version in (("r1", "1"), ("r2", "2")):
        total.labels(model, revision, version, "200").inc(requests - errors)
        total.labels(model, revision, version, "503").inc(errors)
        total.labels(model, revision, version, "400").inc(3)
        for _ in range(requests):
            latency.labels(model, revision, version).observe(0.004)
            probability.labels(model, revision, version).observe(0.95)
        classes.labels(model, revision, version, "1").inc(requests)
        bins.labels(model, revision, version, "f", "3").inc(requests)
    shadow.labels(model, "r2", "2", "agreed").inc(7)
    shadow_rows.labels(model, "r2", "2", "agreed").inc(70)
    total.labels("other", "r9", "9", "200").inc(1000)
    return generate_latest(registry).decode()


def counts(requests: float = 100, **changes: object) -> RevisionCounts:
    """A healthy window: fast, one class 60/40, confident, inputs as the reference, agreeing."""
    base = RevisionCounts(
        model_version="1",
        requests=requests,
        latency_buckets={0.005: requests * 0.99, 0.01: requests, float("inf"): requests},
        classes={"0": requests * 0.4, "1": requests * 0.6},
        probability_buckets={b: (requests if b >= 0.9 else 0.0) for b in PROBABILITY_BUCKETS},
        input_bins={"f": {str(i): requests * 3 / 10 for i in range(10)}},
        shadow={"agreed": 50.0},
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_parse_exposition_reads_every_family_of_the_model_per_revision() -> None:
    snapshot = parse_exposition(exposition(40, errors=2), "m")
    assert set(snapshot.revisions) == {"r1", "r2"}
    r2 = snapshot.get("r2")
    assert (r2.model_version, r2.requests, r2.errors_5xx) == ("2", 43, 2)
    assert r2.latency_buckets[0.005] == 40 and r2.latency_buckets[float("inf")] == 40
    assert r2.classes == {"1": 40} and r2.input_bins == {"f": {"3": 40}}
    assert r2.probability_buckets[0.9] == 0 and r2.probability_buckets[1.0] == 40
    assert r2.shadow == {"agreed": 7} and snapshot.get("r1").shadow == {}
    assert r2.shadow_rows == {"agreed": 70}


def test_parse_exposition_refuses_text_that_is_not_exposition() -> None:
    with pytest.raises(ValueError, match="not Prometheus text exposition"):
        parse_exposition('mlops_inference_requests_total{model="m" 1 2 3\n', "m")


def test_window_takes_differences_and_treats_a_counter_that_went_down_as_a_restart() -> None:
    before, after = parse_exposition(exposition(10), "m"), parse_exposition(exposition(40), "m")
    counts_ = window(before, after)
    assert counts_.get("r1").requests == 30 and counts_.get("r1").classes == {"1": 30}
    assert counts_.get("r2").shadow == {"agreed": 0} and counts_.resets == []
    restarted = window(after, before)
    assert restarted.resets == ["r1", "r2"] and restarted.get("r1").requests == 13


def test_quantile_interpolates_as_histogram_quantile() -> None:
    assert quantile({0.1: 50, 0.2: 100, float("inf"): 100}, 0.5) == pytest.approx(0.1)
    assert quantile({0.1: 0, 0.2: 100, float("inf"): 100}, 0.99) == pytest.approx(0.199)
    assert quantile({0.1: 0, float("inf"): 10}, 0.99) == 0.1
    assert quantile({}, 0.99) is None


def test_psi_of_a_small_undrifted_window_with_an_empty_bin_stays_small() -> None:
    # 50 rows over ten 10% bins, one bin missed by chance: a floor of 1e-4 alone gave 0.69.
    assert psi([0.1] * 10, [6, 6, 6, 5, 5, 6, 5, 6, 5, 0]) < 0.1
    assert psi([0.1] * 10, [50, 0, 0, 0, 0, 0, 0, 0, 0, 0]) > 1


def test_jensen_shannon_is_zero_for_equal_shares_and_one_for_disjoint_ones() -> None:
    assert jensen_shannon([40, 60], [400, 600], smoothing=0.5) == pytest.approx(0, abs=1e-4)
    assert jensen_shannon([1000, 0], [0, 1000], smoothing=1e-9) == pytest.approx(1, abs=1e-3)


def test_a_healthy_canary_steps_up() -> None:
    verdict = judge(counts(900), counts(100), REFERENCE, Thresholds(min_drift_rows=10))
    assert verdict.decision == PROMOTE_STEP, verdict.reason
    assert all(s.passed for s in verdict.signals), verdict.signals


@pytest.mark.parametrize(
    ("canary", "signal"),
    [
        (counts(errors_5xx=5), "error_rate"),
        (counts(latency_buckets={0.005: 0, 0.5: 99, 1.0: 100, float("inf"): 100}), "p99_latency"),
        # Class 1 at half its stable share: a shift, not a collapse (class_share passes).
        (counts(classes={"0": 70, "1": 30}), "class_divergence"),
        (
            counts(probability_buckets={b: (100 if b >= 0.6 else 0) for b in PROBABILITY_BUCKETS}),
            "probability_divergence",
        ),
        (counts(input_bins={"f": {"0": 300}}), "input_drift"),
        (counts(shadow={"agreed": 30, "disagreed": 30}), "shadow_agreement"),
    ],
)
def test_each_signal_alone_rolls_the_canary_back_and_is_named(
    canary: RevisionCounts, signal: str
) -> None:
    verdict = judge(counts(900), canary, REFERENCE, Thresholds(min_drift_rows=10))
    assert verdict.decision == ROLLBACK
    assert verdict.failing == [signal]
    assert verdict.reason.startswith(signal)


def _p99(revision: RevisionCounts) -> float:
    found = quantile(revision.latency_buckets, 0.99)
    assert found is not None
    return found


def test_a_p99_fails_only_when_both_its_ratio_and_its_absolute_increase_are_beyond_bounds() -> None:
    fast_stable = counts(900)  # p99 5 ms
    four_times = counts(latency_buckets={0.005: 0, 0.01: 0, 0.02: 100, float("inf"): 100})
    assert _p99(four_times) / _p99(fast_stable) > 3.9  # clearly past the 2x ratio ...
    assert _p99(four_times) - _p99(fast_stable) < 0.025  # ... but only 15 ms slower
    assert judge(fast_stable, four_times, REFERENCE, Thresholds()).decision == PROMOTE_STEP

    slow_stable = counts(900, latency_buckets={0.05: 0, 0.1: 900, float("inf"): 900})
    half_again = counts(latency_buckets={0.1: 0, 0.15: 100, float("inf"): 100})
    assert _p99(half_again) - _p99(slow_stable) > 0.045  # 50 ms slower, but only 1.5x
    assert judge(slow_stable, half_again, REFERENCE, Thresholds()).decision == PROMOTE_STEP

    both = judge(fast_stable, counts(latency_buckets={0.005: 0, 0.1: 100, float("inf"): 100}),
                 REFERENCE, Thresholds())  # fmt: skip
    assert both.decision == ROLLBACK and both.failing == ["p99_latency"]


def test_a_window_of_exactly_min_requests_canary_requests_is_judged_not_held() -> None:
    verdict = judge(counts(900), counts(50), REFERENCE, Thresholds(min_requests=50))
    assert verdict.decision == PROMOTE_STEP, verdict.reason
    assert judge(counts(900), counts(49), REFERENCE, Thresholds(min_requests=50)).decision == HOLD


def test_shadow_agreement_below_its_bound_rolls_back_even_on_a_window_too_small_to_judge() -> None:
    # 10 canary requests (50 needed) but 30 compared mirrors, a third agreeing: a hard signal.
    small = counts(10, shadow={"agreed": 10, "disagreed": 20})
    verdict = judge(counts(900), small, REFERENCE, Thresholds(min_requests=50))
    assert verdict.decision == ROLLBACK and verdict.reason.startswith("shadow_agreement")


def test_an_error_rate_increase_exactly_at_the_bound_passes() -> None:
    at_bound = counts(errors_5xx=1)  # 1 in 100 on a stable without errors: +0.01
    verdict = judge(counts(900), at_bound, REFERENCE, Thresholds(max_error_rate_increase=0.01))
    error = next(s for s in verdict.signals if s.name == "error_rate")
    assert error.value == pytest.approx(0.01) and error.passed is True
    assert verdict.decision == PROMOTE_STEP
    beyond = judge(counts(900), counts(errors_5xx=2), REFERENCE, Thresholds())
    assert beyond.failing == ["error_rate"]


@pytest.mark.parametrize(
    "family",
    ["latency_buckets", "classes", "probability_buckets", "input_bins", "shadow", "shadow_rows"],
)
def test_a_counter_reset_of_any_family_starts_a_fresh_window(family: str) -> None:
    before = counts(1000, shadow_rows={"agreed": 500.0})
    restarted = counts(1100, shadow_rows={"agreed": 600.0})  # every family went up ...
    lower = {  # ... but this one, which a restarted worker counts from zero again
        "latency_buckets": {0.005: 1.0, 0.01: 1.0, float("inf"): 1.0},
        "classes": {"0": 1.0, "1": 1.0},
        "probability_buckets": {b: 1.0 for b in PROBABILITY_BUCKETS},
        "input_bins": {"f": {"0": 1.0}},
        "shadow": {"agreed": 1.0},
        "shadow_rows": {"agreed": 1.0},
    }[family]
    restarted = replace(restarted, **{family: lower})
    found = window(Snapshot({"r": before}), Snapshot({"r": restarted}))
    assert found.resets == ["r"]
    assert found.get("r") == restarted  # what was counted since the restart, not a difference


def test_a_canary_that_stops_predicting_a_class_the_stable_predicts_is_rolled_back() -> None:
    # Imbalanced data: the stable finds the 5% positives; the canary predicts the majority only.
    stable = counts(900, classes={"0": 855.0, "1": 45.0})
    majority_only = counts(200, classes={"0": 200.0})
    verdict = judge(stable, majority_only, REFERENCE, Thresholds(min_drift_rows=10))
    by_name = {s.name: s for s in verdict.signals}
    assert by_name["class_divergence"].passed is True  # JS 0.02: the divergence misses it
    assert verdict.decision == ROLLBACK and verdict.failing == ["class_share"]
    assert "1: 0/200 rows, stable share 0.050" in verdict.reason


def test_a_class_share_dip_a_small_window_can_show_by_chance_is_not_judged_or_failed() -> None:
    stable = counts(900, classes={"0": 855.0, "1": 45.0})
    # 50 rows without a 5% class happen 8% of the time with the stable's own shares.
    small = judge(stable, counts(50, classes={"0": 50.0}), REFERENCE, Thresholds())
    share = next(s for s in small.signals if s.name == "class_share")
    assert share.passed is None and "too few canary rows to judge 1" in share.detail
    # 200 rows with 6 of it (3%, 0.6 of its share) are within chance: judged and passed.
    dip = judge(stable, counts(200, classes={"0": 194.0, "1": 6.0}), REFERENCE, Thresholds())
    assert next(s for s in dip.signals if s.name == "class_share").passed is True


def test_too_few_canary_requests_hold_and_noisy_model_signals_do_not_roll_back() -> None:
    few = counts(10, classes={"0": 9, "1": 1})
    verdict = judge(counts(900), few, REFERENCE, Thresholds(min_requests=50))
    assert verdict.decision == HOLD and "10 canary requests" in verdict.reason


def test_errors_roll_back_even_on_a_window_too_small_to_judge_the_model() -> None:
    verdict = judge(counts(900), counts(10, errors_5xx=5), REFERENCE, Thresholds(min_requests=50))
    # The model signals of 10 rows are noise: they are listed but the reason is the error rate.
    assert verdict.decision == ROLLBACK and verdict.reason.startswith("error_rate")
    assert "divergence" not in verdict.reason


def test_signals_without_enough_data_are_reported_not_judged() -> None:
    canary = counts(shadow={"agreed": 2, "disagreed": 3})
    verdict = judge(counts(900), canary, REFERENCE, Thresholds())
    shadow = next(s for s in verdict.signals if s.name == "shadow_agreement")
    assert shadow.passed is None and shadow.value == pytest.approx(0.4)
    small = judge(counts(900), counts(50), REFERENCE, Thresholds(min_drift_rows=1000))
    drift = next(s for s in small.signals if s.name == "input_drift")
    assert drift.passed is None and "too few to judge" in drift.detail


def test_shadow_agreement_is_judged_per_row_not_per_request() -> None:
    # 30 mirrored batch requests of 100 rows; the canary differs on one row in each: 99%.
    batches = counts(
        shadow={"agreed": 0, "disagreed": 30}, shadow_rows={"agreed": 2970, "disagreed": 30}
    )
    verdict = judge(counts(900), batches, REFERENCE, Thresholds(min_drift_rows=10))
    shadow = next(s for s in verdict.signals if s.name == "shadow_agreement")
    assert shadow.passed is True and shadow.value == pytest.approx(0.99)
    # A request the canary failed counts against it.
    failing = counts(shadow={"agreed": 20, "failed": 10}, shadow_rows={"agreed": 20})
    assert judge(counts(900), failing, REFERENCE, Thresholds()).failing == ["shadow_agreement"]


def test_thresholds_out_of_range_name_the_field() -> None:
    with pytest.raises(ValueError, match="min_shadow_agreement=1.5"):
        Thresholds(min_shadow_agreement=1.5)


def test_reference_fractions_come_from_the_metadata() -> None:
    metadata = {"reference_statistics": {"features": {"f": {"bin_fractions": [0.5, 0.5]}}}}
    assert reference_fractions(metadata) == {"f": [0.5, 0.5]}
    assert reference_fractions({}) == {}


def test_observing_a_batch_gives_the_samples_observing_each_value_gives() -> None:
    """``observe_all`` writes bucket counts directly; it must stay what ``observe`` writes."""
    from prometheus_client import CollectorRegistry, Histogram

    from serving.observability import observe_all

    values = [0.0, 0.1, 0.1000001, 0.55, 0.9, 0.95, 1.0, 1.0, 0.3, 0.7, 2.0]
    one_by_one, batched = CollectorRegistry(), CollectorRegistry()
    buckets = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    each = Histogram("p", "p", ["m"], buckets=buckets, registry=one_by_one).labels("a")
    for value in values:
        each.observe(value)
    observe_all(Histogram("p", "p", ["m"], buckets=buckets, registry=batched).labels("a"), values)

    def samples(registry: CollectorRegistry) -> list:
        found = [(s.name, s.labels, s.value) for m in registry.collect() for s in m.samples]
        return [sample for sample in found if sample[0] != "p_created"]  # a timestamp

    assert samples(batched) == samples(one_by_one)
    assert ("p_bucket", {"m": "a", "le": "0.1"}, 2.0) in samples(batched)  # 0.0 and 0.1
