"""Write the model as a new, never-overwritten version of the store, and register it."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlops.store import open_store, sha256_file


def build_metadata(
    model_path: Path,
    metrics: dict[str, float],
    data_fingerprint: str,
    params: dict[str, Any],
    reference: dict[str, Any],
    feature_names: list[str],
    sklearn_version: str,
) -> dict[str, Any]:
    """The ``metadata.json`` of a version: what it is, how it was made, how to check it."""
    import mlops

    return {
        "sha256": sha256_file(model_path),
        "metrics": metrics,
        "data_fingerprint": data_fingerprint,
        "params": params,
        "feature_names": feature_names,
        "reference_statistics": reference,
        "sklearn_version": sklearn_version,
        "code_version": os.environ.get("MLOPS_CODE_VERSION", mlops.__version__),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def publish_model(
    store_uri: str, model_name: str, model_path: Path, metadata: dict[str, Any]
) -> tuple[int, str]:
    """Publish a new version; return ``(version, storage_uri)``."""
    store = open_store(store_uri)
    version = store.publish(model_name, model_path, metadata)
    return version, store.version_uri(model_name, version)
