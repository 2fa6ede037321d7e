"""The canary router: one ``kserve.Model`` under the InferenceService name, revisions behind it.

It gives the local state (written by ``serving.local_controller``) the meaning KServe's Knative
mode gives an InferenceService: every revision in ``status...traffic`` is loaded and live,
requests to ``/v2/models/{name}/infer`` are split by the traffic percents, and a request pinned
to a version (``/versions/{version}/infer``, as KServe's tag routing) reaches that revision.

A watcher thread polls the state file; on a change it loads new revisions *beside* the serving
ones and then swaps one immutable ``Routes`` object in a single assignment. A request reads the
routes once, so one in flight when a deploy, promote or rollback lands finishes on the model it
started with, and no request ever sees half a change.

A revision whose model fails to load keeps its share: requests routed to it get 503 with
``Retry-After`` (``RevisionUnavailable``), and the watcher retries loading it on a capped
exponential schedule (``retry_delay_s``); when it loads, its failure is cleared in the state.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kserve import Model
from kserve.errors import ModelNotFound, ModelNotReady
from kserve.protocol.infer_type import InferRequest, InferResponse

from serving import local_controller
from serving.model import Revision, RevisionModel
from serving.observability import current_request
from serving.shadow import ShadowMirror, sample_rate_from_env

logger = logging.getLogger("mlops.serving")
# Response headers naming who answered: v1 responses have no model_version field.
REVISION_HEADER = "x-mlops-revision"
VERSION_HEADER = "x-mlops-model-version"
_PINNED: contextvars.ContextVar[str | None] = contextvars.ContextVar("mlops_pinned", default=None)
# Retries of a revision that failed to load: 1 s, doubling, at most a minute apart.
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 60.0


def retry_delay_s(
    attempt: int, first_s: float = FIRST_RETRY_S, cap_s: float = MAX_RETRY_S
) -> float:
    """How long to wait after failed load number ``attempt`` (1, 2, ...) before the next one.

    Args:
        attempt: How many loads of the revision have failed in a row (at least 1).
        first_s: The wait after the first failure.
        cap_s: The longest wait.

    Returns:
        ``first_s`` doubled per earlier failure, at most ``cap_s``: 1, 2, 4, ..., 32, 60, 60 s.
    """
    return float(min(cap_s, first_s * 2 ** min(max(attempt, 1) - 1, 32)))


@dataclass(frozen=True)
class LoadFailure:
    """A revision that failed to load, and when to try it again.

    Attributes:
        reason: Why, in one line.
        attempts: Failed loads in a row.
        retry_at: ``time.monotonic()`` of the next attempt.
    """

    reason: str
    attempts: int
    retry_at: float


class RevisionUnavailable(ModelNotReady):
    """A request was routed to a revision whose model failed to load (503, ``Retry-After``)."""

    def __init__(self, model_name: str, detail: str, retry_after_s: float) -> None:
        """Name the revision and why in ``detail``; ``retry_after_s`` goes into the header."""
        super().__init__(model_name, detail)
        self.retry_after_s = retry_after_s


class VersionNotFound(ModelNotFound):
    """No live revision answers to the requested version (KServe maps ModelNotFound to 404)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


@contextlib.contextmanager
def pinned_version(version: str) -> Iterator[None]:
    """Route the requests handled inside this block to ``version`` only."""
    token = _PINNED.set(version)
    try:
        yield
    finally:
        _PINNED.reset(token)


@dataclass(frozen=True)
class Route:
    """A live revision and its share of traffic.

    Attributes:
        model: The model of the revision (not loaded when ``failure`` is set).
        tag: ``latest`` or ``prev``.
        percent: Share of unpinned requests, 0..100.
        failure: Why the model failed to load; requests routed here then get 503.
    """

    model: RevisionModel
    tag: str
    percent: int
    failure: str = ""

    def describe(self) -> str:
        """``2 (latest, 10%)``, or ``2 (latest, 10%, failed)``."""
        failed = ", failed" if self.failure else ""
        return f"{self.model.revision.model_version} ({self.tag}, {self.percent}%{failed})"


class Routes:
    """An immutable traffic split over live revisions."""

    def __init__(self, routes: tuple[Route, ...] = ()) -> None:
        """Build the split; routes with 0% stay reachable by version only."""
        self.routes = routes
        self._weighted = [r for r in routes if r.percent > 0]
        self._total = sum(r.percent for r in self._weighted)

    @property
    def serving(self) -> bool:
        """Whether some loaded revision takes unpinned traffic."""
        return any(not r.failure for r in self._weighted)

    def pick(self, draw: float) -> Route | None:
        """The route for a uniform ``draw`` in [0, 1), by the traffic percents."""
        point = draw * self._total
        for route in self._weighted:
            point -= route.percent
            if point < 0:
                return route
        return self._weighted[-1] if self._weighted else None

    def find(self, version: str) -> Route | None:
        """The route of a store version (``2``), a revision name or a tag (``latest``/``prev``)."""
        for route in self.routes:
            revision = route.model.revision
            if version in (revision.model_version, revision.name, route.tag):
                return route
        return None

    def shadow_target(self, answered: Route) -> Route | None:
        """The canary to mirror a request to, when ``answered`` is the stable (``prev``) one.

        A canary is the ``latest`` revision while it takes 0 < percent < 100 of the traffic.
        """
        if answered.tag != "prev":
            return None
        for route in self._weighted:
            if route.tag == "latest" and route.percent < 100 and route is not answered:
                if route.model.revision.name != answered.model.revision.name:
                    return route
        return None

    def describe(self) -> str:
        """``1 (prev, 90%), 2 (latest, 10%)``."""
        return ", ".join(r.describe() for r in self.routes) or "none"


class CanaryRouter(Model):
    """Serves the InferenceService ``name`` from the local state, split across its revisions."""

    def __init__(
        self,
        name: str,
        state_dir: Path,
        poll_interval_s: float = 0.5,
        shadow_sample_rate: float | None = None,
    ) -> None:
        """Create the router; ``load()`` reads the state and loads the revisions.

        Args:
            name: The InferenceService (and served model) name.
            state_dir: The directory holding ``serving/<name>.yaml``.
            poll_interval_s: How often the watcher looks at the state file.
            shadow_sample_rate: Share of the stable revision's requests mirrored to a canary
                (``serving.shadow``); ``None`` reads ``MLOPS_SHADOW_SAMPLE_RATE`` (default 0.25).
        """
        super().__init__(name, return_response_headers=True)
        self.state_dir = state_dir
        self.poll_interval_s = poll_interval_s
        self.routes = Routes()
        self._loaded: dict[str, RevisionModel] = {}
        self._failures: dict[str, LoadFailure] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._random = random.Random()
        rate = sample_rate_from_env() if shadow_sample_rate is None else shadow_sample_rate
        self.shadow = ShadowMirror(rate)

    def load(self) -> bool:
        """Read the state and load every revision that takes traffic.

        KServe's dataplane calls this again for each request while the router is not ready
        (no revision that takes traffic loaded): then only the revisions due for a retry are
        loaded again (``retry_delay_s`` apart), not one load per request.

        Raises:
            local_controller.NotDeployedError: When the InferenceService is not deployed.
        """
        self.refresh(force=not self.routes.routes or self.retry_due())
        return self.ready

    def retry_after_s(self) -> float:
        """Seconds a client should wait before it tries again while nothing serves (at least 1).

        The time to the next load of the failed revision with the largest share, else 1.
        """
        failed = [r for r in self.routes.routes if r.failure]
        if not failed:
            return 1.0
        return self.next_retry_s(max(failed, key=lambda r: r.percent).model.revision.name)

    def start(self) -> None:
        """Start watching the state file (KServe's ModelServer calls this on registration)."""
        # Each worker process (mlops serve --workers) starts its router: its own draws.
        self._random.seed()
        self.shadow.start()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._watch, name=f"{self.name}-state-watcher", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop watching and mirroring."""
        self._stop.set()
        self.shadow.stop()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            self._flush_drift()
            try:
                self.refresh(force=self.retry_due())
            except local_controller.StateFileError as err:  # the message says it all
                logger.error("%s; serving as before", err)
            except Exception:  # keep serving the last good routes whatever the state file holds
                logger.exception("could not apply the state of %s; serving as before", self.name)

    def _flush_drift(self) -> None:
        for revision in list(self._loaded.values()):
            if revision.drift is not None:
                revision.drift.flush()

    def _state_stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(local_controller.state_path(self.name, self.state_dir))
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_ino, stat.st_size)

    def retry_due(self) -> bool:
        """Whether a failed revision that takes part in the routes is due for another load."""
        now = time.monotonic()
        return any(
            r.failure and self._failures[r.model.revision.name].retry_at <= now
            for r in self.routes.routes
            if r.model.revision.name in self._failures
        )

    def refresh(self, force: bool = False) -> bool:
        """Apply the state file if it changed: load new revisions, then swap the routes.

        A revision whose model fails to load is recorded as failed in the state and keeps its
        share: requests routed to it get 503 until a retry (``retry_delay_s`` apart) loads it,
        which clears the failure in the state.

        Args:
            force: Re-read the state even when the file looks unchanged (and retry the failed
                revisions that are due).

        Returns:
            Whether the state was read.
        """
        with self._refresh_lock:
            stamp = self._state_stamp()
            if not force and stamp == self._stamp:
                return False
            # Remembered before reading: a state that cannot be read is reported once, and read
            # again when the file changes, not at every poll.
            self._stamp = stamp
            if stamp is None and not force:
                logger.warning("%s: the state file is gone; serving as before", self.name)
                return False
            state = local_controller.read_state(self.name, self.state_dir)
            targets = local_controller.traffic_targets(state)
            loaded = {
                t.revision: self._loaded[t.revision] for t in targets if t.revision in self._loaded
            }
            wrote = False
            for target in targets:
                recorded = state["revisions"][target.revision].get("failed")
                if target.revision not in loaded:
                    model = self._try_load(target)
                    wrote |= model is None and self._record_failure(target.revision, recorded)
                    if model is not None:
                        loaded[target.revision] = model
                if target.revision in loaded and recorded:
                    # Loaded now (or by an earlier server): the recorded failure is stale.
                    local_controller.clear_revision_failure(
                        self.name, target.revision, self.state_dir
                    )
                    wrote = True
            if wrote:
                stamp = self._state_stamp()
            live = {t.revision for t in targets}
            self._failures = {r: f for r, f in self._failures.items() if r in live}
            routes = Routes(tuple(self._route(t, loaded) for t in targets))
            self._loaded = loaded
            # One assignment: requests read either the old routes or the new ones, never a mix.
            self.routes = routes
            self.ready = routes.serving
            self._stamp = stamp
            logger.info("%s: serving %s", self.name, routes.describe())
            return True

    def _route(
        self, target: local_controller.TrafficTarget, loaded: dict[str, RevisionModel]
    ) -> Route:
        model = loaded.get(target.revision)
        if model is not None:
            return Route(model, target.tag, target.percent)
        revision = Revision(target.revision, target.storage_uri, target.model_version)
        failure = self._failures[target.revision].reason
        return Route(RevisionModel(self.name, revision), target.tag, target.percent, failure)

    def _try_load(self, target: local_controller.TrafficTarget) -> RevisionModel | None:
        """Load the revision unless its last failure is recent (then ``None``)."""
        failure = self._failures.get(target.revision)
        if failure is not None and failure.retry_at > time.monotonic():
            return None
        model = RevisionModel(
            self.name, Revision(target.revision, target.storage_uri, target.model_version)
        )
        try:
            model.load()
        except Exception as err:  # any failure to load means: not ready, say why, retry later
            attempts = failure.attempts + 1 if failure else 1
            reason = f"{type(err).__name__}: {err}"
            delay = retry_delay_s(attempts)
            self._failures[target.revision] = LoadFailure(
                reason, attempts, time.monotonic() + delay
            )
            logger.error(
                "revision %s failed to load (attempt %d, next in %.0f s): %s",
                target.revision,
                attempts,
                delay,
                reason,
            )
            return None
        self._failures.pop(target.revision, None)
        logger.info("loaded revision %s (model version %s)", target.revision, target.model_version)
        return model

    def _record_failure(self, revision: str, recorded: dict[str, Any] | None) -> bool:
        """Write the failure into the state unless it is there already; whether it wrote."""
        reason = self._failures[revision].reason
        if recorded and recorded.get("reason") == reason:
            return False
        local_controller.mark_revision_failed(self.name, revision, reason, self.state_dir)
        return True

    def unavailable(self, route: Route) -> RevisionUnavailable:
        """The 503 for a request that reached a revision whose model failed to load."""
        revision = route.model.revision
        retry_after = self.next_retry_s(revision.name)
        return RevisionUnavailable(
            self.name,
            f"Revision {revision.name!r} (model version {revision.model_version}, "
            f"{route.tag}, {route.percent}% of traffic) failed to load: {route.failure}. "
            f"Loading it again within {retry_after:.0f} s; `mlops get` shows the status.",
            retry_after,
        )

    def next_retry_s(self, revision: str) -> float:
        """Seconds until the next load of a failed ``revision`` (at least 1)."""
        failure = self._failures.get(revision)
        wait = failure.retry_at - time.monotonic() if failure else self.poll_interval_s
        return float(max(1, math.ceil(wait)))

    def predict(
        self,
        payload: dict[str, Any] | InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        """Answer with the revision the split (or the pinned version) chooses.

        Raises:
            VersionNotFound: When the pinned version is not live (404).
            ModelNotReady: When no revision takes traffic (503).
        """
        routes = self.routes
        version = _PINNED.get()
        if version is not None:
            route = routes.find(version)
            if route is None:
                raise VersionNotFound(
                    f"model {self.name!r} has no live version {version!r}: live versions are "
                    f"{routes.describe()} (a store version, revision name, 'latest' or 'prev')"
                )
        else:
            route = routes.pick(self._random.random())
            if route is None:
                raise ModelNotReady(self.name, "No revision takes traffic; see `mlops get`.")
        revision = route.model.revision
        if route.failure:
            raise self.unavailable(route)
        info = current_request()
        if info is not None:
            info.revision, info.model_version = revision.name, revision.model_version
        if response_headers is not None:
            response_headers[REVISION_HEADER] = revision.name
            response_headers[VERSION_HEADER] = revision.model_version
        answer = route.model.predict(payload, headers)
        if version is None:
            canary = routes.shadow_target(route)
            if canary is not None:
                self.shadow.offer(payload, route.model, canary.model)
        return answer

    def versions(self) -> list[str]:
        """The store versions of the live revisions."""
        return [r.model.revision.model_version for r in self.routes.routes]

    def find(self, version: str) -> Route | None:
        """The live route of ``version`` (store version, revision name or tag), if any."""
        return self.routes.find(version)

    def get_input_types(self) -> list[dict[str, Any]]:
        """The input tensor of the revision taking the most traffic."""
        return self._main_model().get_input_types()

    def get_output_types(self) -> list[dict[str, Any]]:
        """The output tensor of the revision taking the most traffic."""
        return self._main_model().get_output_types()

    def _main_model(self) -> RevisionModel:
        routes = [r for r in self.routes.routes if not r.failure]
        if not routes:
            raise ModelNotReady(self.name)
        return max(routes, key=lambda r: r.percent).model
