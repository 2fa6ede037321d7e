"""The rollout loop's own decisions, on scripted metric snapshots (the target is a stand-in)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from serving.canary_analysis import Snapshot, Thresholds
from serving.inference_service import TrafficChangedError
from serving.rollout import (
    EXIT_PROMOTED,
    EXIT_ROLLED_BACK,
    EXIT_STOPPED,
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

    def __init__(
        self, snapshots: list[Snapshot | BaseException], changed_at_check: int | None = None
    ) -> None:
        self.snapshots = snapshots
        self.calls: list[Any] = []
        self.checks = 0
        self.changed_at_check = changed_at_check  # a human's rollback seen at this check

    def lock(self) -> contextlib.AbstractContextManager[None]:
        self.calls.append("lock")
        return contextlib.nullcontext()

    def check(self) -> None:
        self.checks += 1
        if self.checks == self.changed_at_check:
            raise TrafficChangedError(
                "a rollback", "stopped by a rollback: canaryTrafficPercent is 0"
            )

    def pair(self) -> CanaryPair:
        return PAIR

    def reference(self, pair: CanaryPair) -> dict[str, list[float]]:
        return REFERENCE

    def read_metrics(self) -> Snapshot:
        item = self.snapshots.pop(0)
        if isinstance(item, BaseException):
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


NO_SHADOW = Thresholds(min_drift_rows=10)


def test_a_last_step_of_100_is_the_promote_itself_never_a_share_of_100() -> None:
    snapshots = [cumulative(0, 0), cumulative(0, 0), cumulative(900, 100)]
    target = Scripted(snapshots)
    result = run_rollout(target, RolloutPlan((10, 100), 1.0, NO_SHADOW), sleep=lambda _: None)
    assert result.exit_code == EXIT_PROMOTED, result.reason
    assert target.calls == ["lock", 10, "promote", "promoted"]
    assert [r.step for r in result.steps] == [10]


def test_a_step_where_the_stable_takes_almost_nothing_is_compared_with_its_last_busy_window() -> (
    None
):
    snapshots = [cumulative(0, 0), cumulative(0, 0), cumulative(900, 100), cumulative(900, 100),
                 cumulative(910, 1100)]  # fmt: skip
    target = Scripted(snapshots)
    result = run_rollout(target, RolloutPlan((10, 95), 1.0, NO_SHADOW), sleep=lambda _: None)
    assert result.exit_code == EXIT_PROMOTED, result.reason
    assert target.calls == ["lock", 10, 95, "promote", "promoted"]
    assert result.steps[-1].verdict.stable_requests == 900


def test_a_step_list_without_a_step_below_100_is_refused_before_any_traffic_moves() -> None:
    with pytest.raises(ValueError, match=r"steps \[100\]: no step below 100, .* no evidence"):
        RolloutPlan((100,))


def test_a_model_signal_never_judged_is_no_evidence_and_the_canary_is_rolled_back() -> None:
    # 300 canary rows per window, 1000 needed to judge input drift: every judged signal passes.
    snapshots = [cumulative(0, 0), cumulative(0, 0), cumulative(900, 100), cumulative(900, 100),
                 cumulative(1400, 200)]  # fmt: skip
    target = Scripted(snapshots)
    plan = RolloutPlan((10, 50, 100), 1.0, Thresholds(min_drift_rows=1000))
    result = run_rollout(target, plan, sleep=lambda _: None)
    assert result.exit_code == EXIT_ROLLED_BACK
    assert result.reason.startswith("no evidence for a promote: input_drift never judged")
    assert "input_drift needs 1000 canary rows in a window" in result.reason
    assert target.calls == ["lock", 10, 50, "rollback", "rolled-back"]


def test_after_a_hold_the_next_window_counts_from_the_hold_so_a_trickle_never_promotes() -> None:
    # 30 canary requests per window, 50 needed: counted from the step's start, the second
    # window would hold 60 and be judged; counted from the hold it holds 30 again.
    snapshots = [cumulative(0, 0), cumulative(0, 0), cumulative(270, 30), cumulative(540, 60)]
    target = Scripted(snapshots)
    plan = RolloutPlan((10, 100), 1.0, Thresholds(max_holds=1, min_drift_rows=10))
    result = run_rollout(target, plan, sleep=lambda _: None)
    assert result.exit_code == EXIT_ROLLED_BACK
    assert result.reason.startswith("not enough traffic")
    assert [r.verdict.decision for r in result.steps] == ["hold", "hold"]
    assert target.calls == ["lock", 10, "rollback", "rolled-back"]


def test_a_humans_traffic_change_stops_the_rollout_which_then_changes_nothing() -> None:
    snapshots = [cumulative(0, 0), cumulative(0, 0), cumulative(900, 100), cumulative(900, 100)]
    target = Scripted(snapshots, changed_at_check=2)
    result = run_rollout(target, RolloutPlan((10, 50, 100), 1.0, NO_SHADOW), sleep=lambda _: None)
    assert result.exit_code == EXIT_STOPPED
    assert result.outcome == "stopped" and result.reason.startswith("stopped by a rollback")
    assert target.calls == ["lock", 10, 50, "stopped"]  # no rollback, no promote


def test_ctrl_c_rolls_back_and_is_raised() -> None:
    target = Scripted([cumulative(0, 0), cumulative(0, 0), KeyboardInterrupt()])
    with pytest.raises(KeyboardInterrupt):
        run_rollout(target, RolloutPlan((10, 100), 1.0), sleep=lambda _: None)
    assert target.calls == ["lock", 10, "rollback"]


def test_an_error_during_the_rollout_rolls_back_and_is_raised() -> None:
    target = Scripted([cumulative(0, 0), cumulative(0, 0), ConnectionError("server gone")])
    with pytest.raises(RolloutAborted, match=r"server gone\); the canary was rolled back"):
        run_rollout(target, RolloutPlan((10, 100), 1.0), sleep=lambda _: None)
    assert target.calls == ["lock", 10, "rollback"]


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


def test_a_humans_change_stops_the_rollout_within_seconds_not_at_the_windows_end() -> None:
    slept: list[float] = []
    target = Scripted([cumulative(0, 0), cumulative(0, 0)], changed_at_check=2)
    result = run_rollout(target, RolloutPlan((10, 100), 12.0), sleep=slept.append)
    assert result.outcome == "stopped"
    assert slept == [5.0, 5.0]  # checked every 5 s: stopped 10 s into the 12 s window


def test_mlops_rollout_steps_100_is_refused_in_one_line_before_anything_moves(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from mlops.cli import main
    from serving import local_controller
    from serving.inference_service import PredictorSettings, build_inference_service

    home = tmp_path / ".mlops"
    for version, canary in ((1, None), (2, 10)):
        settings = PredictorSettings(name="m", storage_uri=f"/store/m/{version}",
                                     model_version=version, canary_traffic_percent=canary)
        local_controller.apply(build_inference_service(settings), home)
    before = local_controller.read_state("m", home)
    monkeypatch.setenv("MLOPS_HOME", str(home))

    result = CliRunner().invoke(main, ["rollout", "m", "--steps", "100"])

    assert result.exit_code == 1
    assert "steps [100]: no step below 100" in result.output
    assert "give shares such as 10,50,100" in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert local_controller.read_state("m", home) == before
