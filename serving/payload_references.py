"""What the payload sink knows of a model version: its classes and training bins, cached.

Read from the version's ``metadata.json`` in the model store, named by the storage URI the
events carry. The read is a blocking S3 (or file) call: the sink runs it in a thread
(:meth:`ReferenceCache.ensure`), never in its event loop. A failed read is not kept forever:
it is tried again after ``RETRY_S``, so a store that was down at the first event does not leave
a version without bins for the whole rollout.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# Seconds before a failed read of a version's metadata is tried again.
RETRY_S = 30.0
# Versions whose reference is kept, at most (the oldest read goes first).
MAX_REFERENCES = 64


@dataclass(frozen=True)
class Reference:
    """What the sink knows of one model version: its classes and training bins.

    Attributes:
        classes: The model's class labels as strings (others count as ``_other``).
        feature_names: The input columns, in order.
        bin_edges: Inner bin edges per feature (same order).
    """

    classes: frozenset[str]
    feature_names: tuple[str, ...]
    bin_edges: tuple[np.ndarray, ...]


def reference_from_metadata(metadata: dict[str, Any]) -> Reference:
    """The classes and bins of a version's ``metadata.json``."""
    features = (metadata.get("reference_statistics") or {}).get("features") or {}
    names = tuple(metadata.get("feature_names") or features)
    return Reference(
        classes=frozenset(str(c) for c in metadata.get("classes") or ()),
        feature_names=names,
        bin_edges=tuple(np.asarray(features[n]["bin_edges"], dtype=float) for n in names),
    )


def store_reader(store_uri: str | None) -> Callable[[str], Reference | None]:
    """A reader of references from ``store_uri`` only (None: from any store a URI names).

    The storage URI comes from an event, so whoever posts one chooses it: with the sink's
    store given, a URI elsewhere is never opened.
    """

    def read(storage_uri: str) -> Reference | None:
        from mlops.store import open_store, split_version_uri

        try:
            root, model, version = split_version_uri(storage_uri)
            if store_uri is not None and root.rstrip("/") != store_uri.rstrip("/"):
                return None
            return reference_from_metadata(open_store(root).read_metadata(model, version))
        except Exception:  # noqa: BLE001 - no reference: classes count as they come, no bins
            return None

    return read


load_reference = store_reader(None)


class ReferenceCache:
    """References per storage URI, read off the event loop; failures retried after a while."""

    def __init__(
        self,
        load: Callable[[str], Reference | None],
        retry_s: float = RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Read with ``load`` (blocking; None when the version cannot be read)."""
        self._load, self.retry_s, self._clock = load, retry_s, clock
        self._found: OrderedDict[str, Reference] = OrderedDict()
        self._failed: OrderedDict[str, float] = OrderedDict()
        self._reading: dict[str, asyncio.Future[Reference | None]] = {}

    def get(self, uri: str) -> Reference | None:
        """The reference of ``uri`` if it was read (never reads)."""
        return self._found.get(uri)

    def due(self, uri: str) -> bool:
        """Whether to read ``uri`` now: never read, or its last read failed ``retry_s`` ago."""
        if not uri or uri in self._found:
            return False
        failed_at = self._failed.get(uri)
        return failed_at is None or self._clock() - failed_at >= self.retry_s

    def _keep(self, uri: str, found: Reference | None) -> None:
        target: OrderedDict[str, Any] = self._found if found is not None else self._failed
        (self._failed if found is not None else self._found).pop(uri, None)
        target[uri] = found if found is not None else self._clock()
        target.move_to_end(uri)
        while len(target) > MAX_REFERENCES:
            target.popitem(last=False)

    def read(self, uri: str) -> Reference | None:
        """Read ``uri`` now if due, in this thread (the benchmark's and direct callers' path)."""
        if self.due(uri):
            self._keep(uri, self._load(uri))
        return self.get(uri)

    async def ensure(self, uri: str) -> Reference | None:
        """Read ``uri`` if due in a worker thread (one read per URI at a time), then return it."""
        if not self.due(uri):
            return self.get(uri)
        reading = self._reading.get(uri)
        if reading is None:
            reading = asyncio.get_running_loop().run_in_executor(None, self._load, uri)
            self._reading[uri] = reading
            try:
                self._keep(uri, await reading)
            finally:
                del self._reading[uri]
        else:
            await asyncio.shield(reading)
        return self.get(uri)
