"""The rollout loop's own decisions, on scripted metric snapshots (the target is a stand-in)."""

from __future__ import annotations

from typing import Any

import pytest

from serving.canary_analysis import Snapshot, Thresholds
from serving.rollout import (
    EXIT_PROMOTED,
    CanaryPair,
    RolloutAborted,
    RolloutPlan,
    canary_pair,
    parse_steps,
    run_rollout,
)
from tests.unit.test_canary_analysis import REFERENCE, counts

PAIR = CanaryPair("s", "1", "c", "2")


class Scripted:
    """Hands out snapshots in order; records what the loop asked for."""

    name = "m"

    def __init__(self, snapshots: list[Snapshot | Exception]) -> None:
        self.snapshots = snapshots
        self.calls: list[Any] = []

    def pair(self) -> CanaryPair:
        return PAIR

    def reference(self, pair: CanaryPair) -> dict[str, list[float]]:
        return REFERENCE

    def read_metrics(self) -> Snapshot:
        item = self.snapshots.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def set_share(self, percent: int) -> None:
        self.calls.append(percent)

    def promote(self) -> None:
        self.calls.append("promote")

    def rollback(self) -> None:
        self.calls.append("rollback")

    def record(self, outcome: dict[str, Any]) -> None:
        self.calls.append(outcome["outcome"])


def cumulative(stable: float, canary: float) -> Snapshot:
    return Snapshot({"s": counts(stable), "c": counts(canary)})


def test_at_100_percent_the_canary_is_compared_with_the_last_stable_window() -> None:
    # At 100% the stable revision answers nothing more: its last busy window is the baseline.
    snapshots = [cumulative(0, 0), cumulative(0, 0), cumulative(900, 100), cumulative(900, 100),
                 cumulative(900, 1100)]
    target = Scripted(snapshots)
    result = run_rollout(target, RolloutPlan((10, 100), 1.0, Thresholds(min_drift_rows=10)),
                         sleep=lambda _: None)
    assert result.exit_code == EXIT_PROMOTED, result.reason
    assert target.calls == [10, 100, "promote", "promoted"]
    assert result.steps[-1].verdict.stable_requests == 900


def test_an_error_during_the_rollout_rolls_back_and_is_raised() -> None:
    target = Scripted([cumulative(0, 0), cumulative(0, 0), ConnectionError("server gone")])
    with pytest.raises(RolloutAborted, match=r"server gone\); the canary was rolled back"):
        run_rollout(target, RolloutPlan((10, 100), 1.0), sleep=lambda _: None)
    assert target.calls == [10, "rollback"]


def test_steps_must_increase_within_1_to_100() -> None:
    assert parse_steps("10, 50,100") == (10, 50, 100)
    with pytest.raises(ValueError, match="must increase"):
        RolloutPlan((50, 10))
    with pytest.raises(ValueError, match="within 1..100"):
        RolloutPlan((0, 100))
    with pytest.raises(ValueError, match="whole percents"):
        parse_steps("10,half")


def test_no_canary_means_nothing_to_roll_out() -> None:
    isvc = {"metadata": {"name": "m"}, "status": {"components": {"predictor": {"traffic": [
        {"revisionName": "m-1", "latestRevision": True, "percent": 100, "tag": "latest"}]}}}}
    with pytest.raises(LookupError, match="has no canary"):
        canary_pair(isvc)
