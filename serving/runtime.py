"""The canary router: one ``kserve.Model`` under the InferenceService name, revisions behind it.

It gives the local state (written by ``serving.local_controller``) the meaning KServe's Knative
mode gives an InferenceService: every revision in ``status...traffic`` is loaded and live,
requests to ``/v2/models/{name}/infer`` are split by the traffic percents, and a request pinned
to a version (``/versions/{version}/infer``, as KServe's tag routing) reaches that revision.

A watcher thread polls the state file; on a change it loads new revisions *beside* the serving
ones and then swaps one immutable ``Routes`` object in a single assignment. A request reads the
routes once, so one in flight when a deploy, promote or rollback lands finishes on the model it
started with, and no request ever sees half a change.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import random
import threading
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

logger = logging.getLogger("mlops.serving")
# Response headers naming who answered: v1 responses have no model_version field.
REVISION_HEADER = "x-mlops-revision"
VERSION_HEADER = "x-mlops-model-version"
_PINNED: contextvars.ContextVar[str | None] = contextvars.ContextVar("mlops_pinned", default=None)


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
        model: The loaded model of the revision.
        tag: ``latest`` or ``prev``.
        percent: Share of unpinned requests, 0..100.
    """

    model: RevisionModel
    tag: str
    percent: int

    def describe(self) -> str:
        """``2 (latest, 10%)``."""
        return f"{self.model.revision.model_version} ({self.tag}, {self.percent}%)"


class Routes:
    """An immutable traffic split over live revisions."""

    def __init__(self, routes: tuple[Route, ...] = ()) -> None:
        """Build the split; routes with 0% stay reachable by version only."""
        self.routes = routes
        self._weighted = [r for r in routes if r.percent > 0]
        self._total = sum(r.percent for r in self._weighted)

    @property
    def serving(self) -> bool:
        """Whether some revision takes unpinned traffic."""
        return self._total > 0

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

    def describe(self) -> str:
        """``1 (prev, 90%), 2 (latest, 10%)``."""
        return ", ".join(r.describe() for r in self.routes) or "none"


class CanaryRouter(Model):
    """Serves the InferenceService ``name`` from the local state, split across its revisions."""

    def __init__(self, name: str, state_dir: Path, poll_interval_s: float = 0.5) -> None:
        """Create the router; ``load()`` reads the state and loads the revisions.

        Args:
            name: The InferenceService (and served model) name.
            state_dir: The directory holding ``serving/<name>.yaml``.
            poll_interval_s: How often the watcher looks at the state file.
        """
        super().__init__(name, return_response_headers=True)
        self.state_dir = state_dir
        self.poll_interval_s = poll_interval_s
        self.routes = Routes()
        self._loaded: dict[str, RevisionModel] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._random = random.Random()

    def load(self) -> bool:
        """Read the state and load every revision that takes traffic.

        Raises:
            local_controller.NotDeployedError: When the InferenceService is not deployed.
        """
        self.refresh(force=True)
        return self.ready

    def start(self) -> None:
        """Start watching the state file (KServe's ModelServer calls this on registration)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._watch, name=f"{self.name}-state-watcher", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.refresh()
            except Exception:  # keep serving the last good routes whatever the state file holds
                logger.exception("could not apply the state of %s; serving as before", self.name)

    def _state_stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(local_controller.state_path(self.name, self.state_dir))
        except FileNotFoundError:
            return None
        return (stat.st_mtime_ns, stat.st_ino, stat.st_size)

    def refresh(self, force: bool = False) -> bool:
        """Apply the state file if it changed: load new revisions, then swap the routes.

        A revision whose model fails to load is recorded as failed in the state (which moves its
        traffic to the revisions that serve) and is not routed to.

        Args:
            force: Re-read the state even when the file looks unchanged.

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
            failed = False
            for target in targets:
                if target.revision not in loaded:
                    model = self._load_revision(target)
                    if model is None:
                        failed = True
                    else:
                        loaded[target.revision] = model
            if failed:
                # The controller moved the failed revision's share; route by its new status.
                stamp = self._state_stamp()
                targets = local_controller.traffic_targets(
                    local_controller.read_state(self.name, self.state_dir)
                )
            routes = Routes(
                tuple(
                    Route(loaded[t.revision], t.tag, t.percent)
                    for t in targets
                    if t.revision in loaded
                )
            )
            self._loaded = {r.model.revision.name: r.model for r in routes.routes}
            # One assignment: requests read either the old routes or the new ones, never a mix.
            self.routes = routes
            self.ready = routes.serving
            self._stamp = stamp
            logger.info("%s: serving %s", self.name, routes.describe())
            return True

    def _load_revision(self, target: local_controller.TrafficTarget) -> RevisionModel | None:
        model = RevisionModel(
            self.name, Revision(target.revision, target.storage_uri, target.model_version)
        )
        try:
            model.load()
        except Exception as err:  # any failure to load means: not ready, say why, route around
            reason = f"{type(err).__name__}: {err}"
            logger.error("revision %s failed to load: %s", target.revision, reason)
            local_controller.mark_revision_failed(
                self.name, target.revision, reason, self.state_dir
            )
            return None
        logger.info("loaded revision %s (model version %s)", target.revision, target.model_version)
        return model

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
        info = current_request()
        if info is not None:
            info.revision, info.model_version = revision.name, revision.model_version
        if response_headers is not None:
            response_headers[REVISION_HEADER] = revision.name
            response_headers[VERSION_HEADER] = revision.model_version
        return route.model.predict(payload, headers)

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
        routes = self.routes.routes
        if not routes:
            raise ModelNotReady(self.name)
        return max(routes, key=lambda r: r.percent).model
