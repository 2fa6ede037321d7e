"""Shadow traffic: a sample of the stable revision's requests, mirrored to the canary.

After the stable revision has answered, the router offers the request here. A sampled request
goes into a small bounded queue (``put_nowait``: the client's request never waits for it; when
the queue is full the request is dropped and counted), and one background thread predicts it
with both revisions and counts whether their labels are identical. The client gets the stable
revision's answer whatever happens here; the canary's answer is never returned to anyone.

Counted in ``mlops_shadow_requests_total{outcome}``, labelled with the canary revision:
``agreed`` (every row's label identical), ``disagreed``, ``failed`` (the canary raised),
``dropped`` (the queue was full); and per row in ``mlops_shadow_rows_total{outcome}``
(``agreed``/``disagreed``), which the rollout judges: one differing row of a 1000-row request
is one row in 1000, not a disagreeing request.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.observability import SHADOW, SHADOW_ROWS, _child

logger = logging.getLogger("mlops.serving.shadow")
# Share of the stable revision's requests mirrored. 0.25: at a 10% canary the canary sees
# 2.5 mirrored requests for each of its own, enough for agreement at the first step, and the
# extra work is a quarter of a prediction per request, done off the request path.
DEFAULT_SAMPLE_RATE = 0.25
SAMPLE_RATE_ENV = "MLOPS_SHADOW_SAMPLE_RATE"
# Mirrored requests waiting at most; beyond, new ones are dropped (the server is busy).
QUEUE_SIZE = 64


def sample_rate_from_env() -> float:
    """``MLOPS_SHADOW_SAMPLE_RATE`` (0..1), else ``DEFAULT_SAMPLE_RATE``.

    Raises:
        ValueError: When the variable is not a number in [0, 1].
    """
    raw = os.environ.get(SAMPLE_RATE_ENV)
    if raw is None or raw == "":
        return DEFAULT_SAMPLE_RATE
    try:
        rate = float(raw)
    except ValueError:
        rate = -1.0
    if not 0 <= rate <= 1:
        raise ValueError(f"{SAMPLE_RATE_ENV}={raw!r}: expected a share between 0 and 1")
    return rate


@dataclass(frozen=True)
class _Mirrored:
    payload: Any
    stable: Any  # RevisionModel; typed loosely to keep this module free of kserve imports
    canary: Any


class ShadowMirror:
    """Mirrors a sample of requests to a second model on a background thread."""

    def __init__(self, sample_rate: float = DEFAULT_SAMPLE_RATE, queue_size: int = QUEUE_SIZE):
        """Set up the queue; ``start()`` starts the worker thread.

        Args:
            sample_rate: Share of offered requests mirrored (0 mirrors none).
            queue_size: Mirrored requests that may wait; more are dropped.
        """
        if not 0 <= sample_rate <= 1:
            raise ValueError(f"shadow sample_rate {sample_rate!r}: expected 0..1")
        self.sample_rate = sample_rate
        self._queue: queue.Queue[_Mirrored | None] = queue.Queue(maxsize=queue_size)
        self._random = random.Random()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the worker thread in the process that serves.

        ``mlops serve --workers`` forks its workers after the router is built, and a thread
        does not survive a fork.
        """
        self._random.seed()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="shadow-mirror", daemon=True)
            self._thread.start()

    def offer(self, payload: Any, stable: Any, canary: Any) -> None:
        """Mirror ``payload`` (already answered by ``stable``) to ``canary``, if sampled.

        Never blocks and never raises: the client's request must not notice.
        """
        if self.sample_rate <= 0 or self._random.random() >= self.sample_rate:
            return
        try:
            self._queue.put_nowait(_Mirrored(payload, stable, canary))
        except queue.Full:
            _child(SHADOW, (*canary.labels, "dropped")).inc()

    def stop(self) -> None:
        """Let the worker finish what it holds and end."""
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass

    def join(self, timeout_s: float = 5.0) -> None:
        """Wait for the worker after ``stop()``."""
        if self._thread is not None:
            self._thread.join(timeout_s)

    def drain(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued request is compared (tests); whether it emptied in time."""
        done = threading.Event()

        def wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        return done.wait(timeout_s)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                outcome, agreed, rows = compare(item.payload, item.stable, item.canary)
                _child(SHADOW, (*item.canary.labels, outcome)).inc()
                if rows:
                    _child(SHADOW_ROWS, (*item.canary.labels, "agreed")).inc(agreed)
                    _child(SHADOW_ROWS, (*item.canary.labels, "disagreed")).inc(rows - agreed)
            except Exception:  # the worker must outlive anything a model does
                logger.exception("shadow comparison failed")
            finally:
                self._queue.task_done()


def compare(payload: Any, stable: Any, canary: Any) -> tuple[str, int, int]:
    """The canary's labels against the stable's on the same rows.

    Args:
        payload: The request the stable revision answered.
        stable: The stable ``RevisionModel``.
        canary: The canary ``RevisionModel``.

    Returns:
        ``(outcome, agreeing rows, rows)``: outcome ``agreed`` (every row), ``disagreed`` or
        ``failed`` (the canary raised; no rows compared).
    """
    expected = stable.predict_labels(stable.model_input(payload))
    try:
        got = canary.predict_labels(canary.model_input(payload))
    except Exception as err:  # a canary that cannot answer is the finding, not an error here
        logger.info("shadow request failed on %s: %s", canary.revision.name, err)
        return "failed", 0, 0
    if got.shape != expected.shape:
        return "disagreed", 0, len(expected)
    agreed = int(np.count_nonzero(got == expected))
    return ("agreed" if agreed == len(expected) else "disagreed"), agreed, len(expected)
