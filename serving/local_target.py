"""The local rollout target: the local InferenceService state and the ``mlops serve`` on it.

``serving.rollout.run_rollout`` drives it: each share is written to the state file (a write
conditional on the traffic the rollout last set and on the ``resourceVersion`` read, see
``serving.deploy.set_canary_traffic``), then the window starts once the server routes by it
(``mlops_revision_traffic_percent`` on ``/metrics``). One rollout at a time holds the state
directory's rollout lock (``local_controller.rollout_lock``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serving.canary_analysis import Snapshot
from serving.inference_service import TrafficSpec, traffic_spec
from serving.rollout import OUTCOME_ANNOTATION, CanaryPair, canary_pair


class LocalTarget:
    """The local InferenceService state and the ``mlops serve`` that follows it."""

    def __init__(
        self,
        name: str,
        state_dir: Path,
        metrics: Callable[[], str],
        tracking_uri: str | None,
        settle_s: float = 10.0,
    ) -> None:
        """Drive ``name`` under ``state_dir``.

        Args:
            name: The InferenceService name.
            state_dir: The local state directory.
            metrics: Returns the server's ``/metrics`` text.
            tracking_uri: MLflow, for the aliases after promote/rollback (``None``: skip).
            settle_s: How long the server may take to route by a new share (it polls the
                state file every 0.5 s by default).
        """
        self.name = name
        self.state_dir = state_dir
        self._metrics = metrics
        self.tracking_uri = tracking_uri
        self.settle_s = settle_s
        self._canary = ""
        self._expected: TrafficSpec | None = None

    def lock(self) -> contextlib.AbstractContextManager[None]:  # noqa: D102
        from serving import local_controller

        return local_controller.rollout_lock(self.name, self.state_dir)

    def _isvc(self) -> dict[str, Any]:
        from serving import local_controller

        return dict(local_controller.read_state(self.name, self.state_dir)["inferenceService"])

    def pair(self) -> CanaryPair:  # noqa: D102
        from serving import local_controller
        from serving.inference_service import traffic_spec

        state = local_controller.read_state(self.name, self.state_dir)
        pair = canary_pair(state["inferenceService"], state["revisions"])
        self._canary = pair.canary
        # What the rollout starts from: any other traffic found later is someone else's.
        self._expected = traffic_spec(state["inferenceService"])
        return pair

    def check(self) -> None:  # noqa: D102
        from serving.inference_service import check_traffic

        check_traffic(self._isvc(), self._expected)

    def reference(self, pair: CanaryPair) -> dict[str, list[float]]:  # noqa: D102
        from mlops.store import open_store, split_version_uri
        from serving import local_controller
        from serving.canary_analysis import reference_fractions

        state = local_controller.read_state(self.name, self.state_dir)
        uri = state["revisions"][pair.canary]["storageUri"]
        root, model, version = split_version_uri(uri)
        return reference_fractions(open_store(root).read_metadata(model, version))

    def read_metrics(self) -> Snapshot:  # noqa: D102
        from serving.canary_analysis import parse_exposition

        return parse_exposition(self._metrics(), self.name)

    def set_share(self, percent: int) -> None:  # noqa: D102
        from serving.deploy import set_canary_traffic

        if not 1 <= percent <= 99:
            raise ValueError(f"share {percent}: a step sets 1..99 (all traffic is a promote)")
        # No alias moves here: champion stays on the stable revision until the promote.
        canary = self._canary or self.pair().canary
        applied = set_canary_traffic(
            self.name, percent, "local", state_dir=self.state_dir, expected=self._expected
        )
        self._expected = traffic_spec(applied)
        # The server polls the state file: the window starts once it routes by the new share.
        deadline = time.monotonic() + self.settle_s
        while served_percent(self._metrics(), self.name, canary) != percent:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the server did not route {percent}% to {canary} within {self.settle_s:g} s "
                    "of the change: is `mlops serve` following this state directory?"
                )
            time.sleep(0.1)

    def promote(self) -> None:  # noqa: D102
        self._final(None)

    def rollback(self) -> None:  # noqa: D102
        self._final(0)

    def _final(self, percent: int | None) -> None:
        from serving.deploy import set_canary_traffic

        applied = set_canary_traffic(
            self.name,
            percent,
            "local",
            state_dir=self.state_dir,
            tracking_uri=self.tracking_uri,
            expected=self._expected,
        )
        self._expected = traffic_spec(applied)

    def record(self, outcome: dict[str, Any]) -> None:  # noqa: D102
        from serving import local_controller

        local_controller.annotate(
            self.name, OUTCOME_ANNOTATION, json.dumps(outcome, sort_keys=True), self.state_dir
        )


def served_percent(metrics_text: str, model: str, revision: str) -> int | None:
    """The share the server routes to ``revision`` (``mlops_revision_traffic_percent``)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics_text):
        if family.name != "mlops_revision_traffic_percent":
            continue
        for sample in family.samples:
            if sample.labels.get("model") == model and sample.labels.get("revision") == revision:
                return int(sample.value)
    return None
