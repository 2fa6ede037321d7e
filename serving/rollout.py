"""The stepped canary rollout: set the share, wait, judge the window, then step, hold or stop.

``run_rollout`` is target-neutral: it drives a ``RolloutTarget`` (set the canary's share, read
the metrics, promote, roll back, record the outcome), so the same loop runs against the local
server (``serving.local_target.LocalTarget``) and a cluster. Each step it reads a ``Snapshot``
before and after the interval and judges the window with ``serving.canary_analysis.judge``.
It never leaves a canary half rolled out behind it: a failed signal, too little traffic for
too long, an error, Ctrl-C or SIGTERM all roll back to the stable revision.

A canary is rolled out only by a promote: a last step of 100 is the promote itself, never a
``canaryTrafficPercent: 100`` (KServe marks a revision rolled out as soon as it takes 100%, so
a rollback from there would leave the canary recorded as the stable). A promote needs evidence:
every model signal that can be computed must have been judged on at least one window with a
stable to compare with; a step list without a step below 100 is refused before anything moves.

Every traffic change is conditional on the traffic the rollout last set (``TrafficSpec``): a
human's promote, rollback or deploy meanwhile stops the rollout ("stopped by ..."), which then
leaves the traffic as the human set it and exits with ``EXIT_STOPPED``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from serving.canary_analysis import (
    HOLD,
    ROLLBACK,
    RevisionCounts,
    Snapshot,
    Thresholds,
    Verdict,
    judge,
    window,
)

# How often a window checks that the traffic is still what the rollout set.
CHECK_EVERY_S = 5.0
PROMOTED = "promoted"
ROLLED_BACK = "rolled-back"
STOPPED = "stopped"
EXIT_PROMOTED, EXIT_ERROR, EXIT_ROLLED_BACK, EXIT_STOPPED = 0, 1, 3, 4
# The signals about the model's answers, each needed once before a promote (when computable).
MODEL_SIGNALS = (
    "class_divergence",
    "class_share",
    "probability_divergence",
    "input_drift",
    "shadow_agreement",
)
# Where the outcome is recorded on the InferenceService (an annotation, in both targets).
OUTCOME_ANNOTATION = "mlops.example.com/rollout"


@dataclass(frozen=True)
class CanaryPair:
    """The two revisions a rollout compares.

    Attributes:
        stable: Revision name of the stable (``prev``) revision.
        stable_version: Its store version.
        canary: Revision name of the canary (``latest``) revision.
        canary_version: Its store version.
    """

    stable: str
    stable_version: str
    canary: str
    canary_version: str


class RolloutTarget(Protocol):
    """Where a rollout runs: the local server, or a cluster."""

    name: str

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Be the one rollout of this InferenceService; ``RolloutLockedError`` if another is."""

    def pair(self) -> CanaryPair:
        """The stable and canary revisions; ``LookupError`` when no canary is deployed."""

    def reference(self, pair: CanaryPair) -> dict[str, list[float]]:
        """The canary's training reference: bin fractions per feature."""

    def read_metrics(self) -> Snapshot:
        """Cumulative counts per revision, now."""

    def set_share(self, percent: int) -> None:
        """Give the canary ``percent`` of the traffic (1..99), once it takes effect.

        Raises ``TrafficChangedError`` when the traffic is no longer what the rollout set.
        """

    def check(self) -> None:
        """Raise ``TrafficChangedError`` when someone else changed the traffic."""

    def promote(self) -> None:
        """Give the canary all traffic for good (aliases follow); conditional, as set_share."""

    def rollback(self) -> None:
        """Give the stable revision all traffic (aliases follow); conditional, as set_share."""

    def record(self, outcome: dict[str, Any]) -> None:
        """Record the outcome on the InferenceService."""


@dataclass(frozen=True)
class RolloutPlan:
    """The steps and the bounds of one rollout.

    Attributes:
        steps: Canary shares in percent, increasing, each 1..100; a last 100 is the promote.
        interval_s: Seconds of traffic judged per window.
        thresholds: The signal bounds (``min_requests`` and ``max_holds`` included).
    """

    steps: tuple[int, ...] = (10, 25, 50, 100)
    interval_s: float = 30.0
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        """Refuse steps that are empty, out of 1..100 or not increasing, and a bad interval."""
        if not self.steps:
            raise ValueError("steps is empty: give canary shares such as 10,50,100")
        if any(not 1 <= s <= 100 for s in self.steps):
            raise ValueError(f"steps {list(self.steps)}: every share must be within 1..100")
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError(f"steps {list(self.steps)}: shares must increase")
        if not self.interval_s > 0:
            raise ValueError(f"interval {self.interval_s}: must be more than 0 seconds")
        if not self.judged_steps:
            raise ValueError(
                f"steps {list(self.steps)}: no step below 100, so no window has a stable "
                "revision to compare the canary with and a promote would have no evidence; "
                "give shares such as 10,50,100"
            )

    @property
    def judged_steps(self) -> tuple[int, ...]:
        """The shares judged on a window: all but a last 100, which is the promote itself."""
        return tuple(s for s in self.steps if s < 100)


def parse_steps(text: str) -> tuple[int, ...]:
    """``"10,50,100"`` -> ``(10, 50, 100)``.

    Raises:
        ValueError: When a part is not a whole number.
    """
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise ValueError(f"steps {text!r}: expected whole percents such as 10,50,100") from err


@dataclass
class StepRecord:
    """One judged window.

    Attributes:
        step: The canary share during the window.
        attempt: 1 for the first window at this share, more after holds.
        verdict: The judge's verdict.
        resets: Revisions whose counters restarted inside the window.
        at: When the window ended (UTC, ISO 8601).
    """

    step: int
    attempt: int
    verdict: Verdict
    resets: list[str]
    at: str

    def as_json(self) -> dict[str, Any]:
        """The JSON log line of this step."""
        return {
            "ts": self.at,
            "event": "rollout-step",
            "step": self.step,
            "attempt": self.attempt,
            "decision": self.verdict.decision,
            "canary_requests": self.verdict.canary_requests,
            "stable_requests": self.verdict.stable_requests,
            "failing": self.verdict.failing,
            "reason": self.verdict.reason,
            "signals": [asdict(s) for s in self.verdict.signals],
            "resets": self.resets,
        }

    def line(self) -> str:
        """One human line: the figures and the decision."""
        figures = "  ".join(
            f"{s.name}={_short(s.value)}{'!' if s.passed is False else ''}"
            for s in self.verdict.signals
        )
        reset = f"  (counters restarted: {', '.join(self.resets)})" if self.resets else ""
        return (
            f"step {self.step:>3}% #{self.attempt}  canary {self.verdict.canary_requests:.0f} req  "
            f"stable {self.verdict.stable_requests:.0f} req  {figures}  -> "
            f"{self.verdict.decision}{reset}"
        )


def _short(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@dataclass
class RolloutResult:
    """What a rollout did.

    Attributes:
        outcome: ``promoted``, ``rolled-back`` or ``stopped`` (someone else changed the
            traffic; it was left as they set it).
        reason: Why, in one line.
        pair: The revisions compared.
        steps: Every judged window.
        exit_code: 0 promoted, 3 rolled back, 4 stopped (1: an error, raised instead).
    """

    outcome: str
    reason: str
    pair: CanaryPair
    steps: list[StepRecord]
    exit_code: int

    def as_json(self) -> dict[str, Any]:
        """The outcome as recorded on the InferenceService and in the JSON log."""
        return {
            "ts": datetime.now(UTC).isoformat(timespec="seconds"),
            "event": "rollout-outcome",
            "outcome": self.outcome,
            "reason": self.reason,
            "stable_version": self.pair.stable_version,
            "canary_version": self.pair.canary_version,
            "steps": len(self.steps),
            "last_step": self.steps[-1].step if self.steps else None,
        }


def run_rollout(
    target: RolloutTarget,
    plan: RolloutPlan,
    emit: Callable[[StepRecord], None] = lambda _: None,
    sleep: Callable[[float], None] = time.sleep,
) -> RolloutResult:
    """Step the canary through ``plan.steps``, judging each window; promote or roll back.

    At each step below 100 the canary gets its share, the loop waits ``interval_s`` and judges
    the window. ``hold`` (too few canary requests) waits another interval at the same share,
    counted from the hold, at most ``max_holds`` times, then rolls back ("not enough traffic":
    an unverified canary is never promoted). A step where the stable revision took too few
    requests to compare with is judged against the last stable window that had enough. After
    the last step the canary is promoted if every computable model signal was judged once on
    a window with a stable to compare with, else rolled back ("no evidence"). When someone
    else changes the traffic meanwhile, the rollout stops and changes nothing more.

    Args:
        target: Where the revisions run.
        plan: Steps, interval, thresholds.
        emit: Called with each judged window (prints it, logs it).
        sleep: ``time.sleep`` (tests pass their own).

    Returns:
        The result; the target holds the promoted or rolled-back InferenceService.

    Raises:
        RolloutLockedError: When another rollout of it runs (nothing was changed).
        LookupError: When no canary is deployed (nothing was changed).
        RolloutAborted: When a step failed (the target's error); the canary was rolled back,
            or the message says the rollback failed too.
    """
    with target.lock():
        return _owned_rollout(target, plan, emit, sleep)


def _owned_rollout(
    target: RolloutTarget,
    plan: RolloutPlan,
    emit: Callable[[StepRecord], None],
    sleep: Callable[[float], None],
) -> RolloutResult:
    from serving.inference_service import TrafficChangedError

    pair = target.pair()
    reference = target.reference(pair)
    target.read_metrics()  # the server answers, before any share changes
    records: list[StepRecord] = []
    try:
        outcome, reason = _steps(target, plan, pair, reference, records, emit, sleep)
    except TrafficChangedError as stopped:
        return _stopped(target, pair, records, stopped)
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM: the canary must not stay half rolled out (unless a human's
        # change is what the rollout would overwrite: then it stays).
        with contextlib.suppress(TrafficChangedError):
            target.rollback()
        raise
    except Exception as err:
        try:
            target.rollback()
        except TrafficChangedError as stopped:
            return _stopped(target, pair, records, stopped)
        except Exception as second:
            raise RolloutAborted(
                f"the rollout stopped ({err}) and the rollback failed too ({second}): the "
                "canary may still take traffic; run `mlops rollback`"
            ) from err
        raise RolloutAborted(
            f"the rollout stopped ({err}); the canary was rolled back to the stable revision"
        ) from err
    return _finish(target, pair, records, outcome, reason)


class RolloutAborted(RuntimeError):
    """The rollout stopped on an error; the message says whether the rollback happened."""


def _steps(
    target: RolloutTarget,
    plan: RolloutPlan,
    pair: CanaryPair,
    reference: dict[str, list[float]],
    records: list[StepRecord],
    emit: Callable[[StepRecord], None],
    sleep: Callable[[float], None],
) -> tuple[str, str]:
    """Run the steps; ``(outcome, reason)``, without promoting or rolling back yet."""
    baseline: RevisionCounts | None = None
    thresholds = plan.thresholds
    judged: set[str] = set()
    # Predicted classes always come with an answer; the other model signals need data the
    # target may not have (probabilities, input bins, mirrored requests): needed once seen.
    computable = {"class_divergence", "class_share"}
    for step in plan.judged_steps:
        target.set_share(step)
        before = target.read_metrics()
        for attempt in range(1, thresholds.max_holds + 2):
            _wait_window(target, plan.interval_s, sleep)
            after = target.read_metrics()
            counts = window(before, after)
            before = after  # the next window (after a hold too) counts from here
            stable = counts.get(pair.stable)
            if stable.requests >= thresholds.min_requests:
                baseline = stable
            elif baseline is not None:
                stable = _with_service_counts(baseline, stable)
            canary = counts.get(pair.canary)
            verdict = judge(stable, canary, reference, thresholds)
            record = StepRecord(step, attempt, verdict, counts.resets, _now())
            records.append(record)
            emit(record)
            computable |= {s.name for s in verdict.signals if s.value is not None}
            if verdict.decision == ROLLBACK:
                return ROLLED_BACK, verdict.reason
            if verdict.decision != HOLD:
                if stable.requests >= thresholds.min_requests:
                    judged |= {s.name for s in verdict.signals if s.passed is not None}
                break
        else:
            return ROLLED_BACK, (
                f"not enough traffic: fewer than {thresholds.min_requests} canary requests "
                f"in each of {thresholds.max_holds + 1} windows of {plan.interval_s:g} s "
                f"at {step}%"
            )
    missing = [name for name in MODEL_SIGNALS if name in computable - judged]
    # A signal that had data in some window must have been judged in one.
    if missing:
        return ROLLED_BACK, (
            f"no evidence for a promote: {', '.join(missing)} never judged on a window with a "
            f"stable to compare with ({_why_not_judged(missing, thresholds)}); lengthen "
            "--interval or send more traffic"
        )
    return PROMOTED, "every signal within bounds at every step, each model signal judged"


def _wait_window(target: RolloutTarget, interval_s: float, sleep: Callable[[float], None]) -> None:
    """Wait out one window, checking every ``CHECK_EVERY_S`` that nobody else moved traffic.

    A human's promote or rollback stops the rollout within seconds, not at the window's end.
    """
    remaining = interval_s
    while remaining > 0:
        part = min(CHECK_EVERY_S, remaining)
        sleep(part)
        remaining -= part
        target.check()


def _why_not_judged(missing: Sequence[str], thresholds: Thresholds) -> str:
    needs = {
        "input_drift": f"input_drift needs {thresholds.min_drift_rows} canary rows in a window",
        "shadow_agreement": (
            f"shadow_agreement needs {thresholds.min_shadow_requests} mirrored requests"
        ),
    }
    found = [needs[name] for name in missing if name in needs]
    return "; ".join(found) or f"each needs {thresholds.min_requests} stable requests too"


def _with_service_counts(baseline: RevisionCounts, current: RevisionCounts) -> RevisionCounts:
    """The last good stable window, for comparison when the stable now takes (almost) nothing."""
    return baseline if current.requests < baseline.requests else current


def _finish(
    target: RolloutTarget,
    pair: CanaryPair,
    records: list[StepRecord],
    outcome: str,
    reason: str,
) -> RolloutResult:
    from serving.inference_service import TrafficChangedError

    try:
        if outcome == PROMOTED:
            target.promote()
            code = EXIT_PROMOTED
        else:
            target.rollback()
            code = EXIT_ROLLED_BACK
    except TrafficChangedError as stopped:
        return _stopped(target, pair, records, stopped)
    result = RolloutResult(outcome, reason, pair, records, code)
    target.record(result.as_json())
    return result


def _stopped(
    target: RolloutTarget, pair: CanaryPair, records: list[StepRecord], stopped: Exception
) -> RolloutResult:
    """Someone else changed the traffic: record it, change nothing more."""
    result = RolloutResult(STOPPED, str(stopped), pair, records, EXIT_STOPPED)
    target.record(result.as_json())
    return result


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def tag_version(
    tracking_uri: str, model_name: str, store_version: str, result: RolloutResult
) -> bool:
    """Tag the canary's MLflow model version with the outcome; ``False`` if not registered."""
    from mlops import registry

    return registry.tag_version(
        tracking_uri,
        model_name,
        store_version,
        {
            "rollout.outcome": result.outcome,
            "rollout.reason": result.reason[:500],
            "rollout.steps": ",".join(f"{r.step}:{r.verdict.decision}" for r in result.steps),
            "rollout.stable_version": result.pair.stable_version,
            "rollout.at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )


def canary_pair(isvc: dict[str, Any], revisions: dict[str, Any] | None = None) -> CanaryPair:
    """The ``prev`` and ``latest`` revisions of an InferenceService's traffic status.

    Args:
        isvc: The InferenceService with its status.
        revisions: Model version per revision name (``{"modelVersion": ...}`` entries, as the
            local state keeps them); without it the traffic targets' tags name the versions.

    Raises:
        LookupError: When there is no canary: one revision serves everything.
    """
    predictor = isvc.get("status", {}).get("components", {}).get("predictor", {})
    traffic: Sequence[dict[str, Any]] = predictor.get("traffic", [])
    latest = next((t for t in traffic if t.get("latestRevision")), None)
    prev = next((t for t in traffic if not t.get("latestRevision")), None)
    if latest is None or prev is None or latest["revisionName"] == prev["revisionName"]:
        raise LookupError(
            f"InferenceService {isvc['metadata']['name']!r} has no canary: one revision serves "
            "all traffic. Deploy one first (`mlops deploy VERSION --canary-percent 10`, or "
            "`mlops run`)"
        )
    known = revisions or {}

    def version(name: str) -> str:
        return str(known.get(name, {}).get("modelVersion", ""))

    return CanaryPair(
        stable=prev["revisionName"],
        stable_version=version(prev["revisionName"]),
        canary=latest["revisionName"],
        canary_version=version(latest["revisionName"]),
    )
