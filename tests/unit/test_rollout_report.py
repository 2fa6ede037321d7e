"""The rollout's HTML report: one plot per signal, offline, failing points marked."""

from __future__ import annotations

import re
from pathlib import Path

from serving.canary_analysis import Thresholds, judge
from serving.rollout import CanaryPair, RolloutPlan, RolloutResult, StepRecord
from serving.rollout_report import write_report
from tests.unit.test_canary_analysis import REFERENCE, counts

PAIR = CanaryPair("m-predictor-00001", "1", "m-predictor-00002", "2")


def _result() -> RolloutResult:
    thresholds = Thresholds(min_drift_rows=10)
    good = judge(counts(900), counts(100), REFERENCE, thresholds)
    bad = judge(counts(900), counts(shadow={"agreed": 10, "disagreed": 40}), REFERENCE, thresholds)
    steps = [StepRecord(10, 1, good, [], "t1"), StepRecord(50, 1, bad, [], "t2")]
    return RolloutResult("rolled-back", bad.reason, PAIR, steps, 3)


def test_report_has_one_plot_per_signal_and_opens_offline(tmp_path: Path) -> None:
    path = write_report(_result(), RolloutPlan((10, 50, 100), 5.0), tmp_path / "rollouts")
    page = path.read_text()
    assert path.parent == tmp_path / "rollouts" and path.name.endswith("-v2-rolled-back.html")
    assert page.count("<svg") == 7  # one per signal, class_share included
    for name in ("error_rate", "p99_latency", "class_divergence", "shadow_agreement"):
        assert f'aria-label="{name} per step"' in page
    assert 'aria-label="class_share per step"' in page
    assert "<script" not in page and not re.search(r'(src|href)="https?:', page)


def test_report_marks_the_failing_point_red_and_says_why(tmp_path: Path) -> None:
    page = write_report(_result(), RolloutPlan((10, 50), 5.0), tmp_path).read_text()
    shadow_chart = page.split('aria-label="shadow_agreement per step"')[1].split("</svg>")[0]
    assert shadow_chart.count('fill="#c62828"') == 1  # the 50% window, not the 10% one
    assert shadow_chart.count('fill="#2e7d32"') == 1
    assert "shadow_agreement 0.200 beyond 0.900" in page
    assert "rolled-back" in page
