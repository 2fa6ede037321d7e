"""Write the model as a new, never-overwritten version of the store (MLflow is not touched here).

The registry entry is made by the deploy step, which needs MLflow anyway for the aliases: one
fewer fresh interpreter importing MLflow per pipeline run.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlops.store import StoreError, open_store, sha256_file


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


# How many of the newest versions a publish looks through for one made by the same MLflow run.
# A step is run again minutes after it failed, so its version, if any, is among the newest;
# the bound keeps a publish at a few reads however many versions the model has.
RECENT_VERSIONS_CHECKED = 10


def publish_model(
    store_uri: str, model_name: str, model_path: Path, metadata: dict[str, Any]
) -> tuple[int, str]:
    """Publish a new version; return ``(version, storage_uri)``.

    Once per MLflow run: when ``metadata`` names an ``mlflow_run_id`` that one of the newest
    versions was already published from (the step failed after publishing and ran again),
    that version is returned and nothing is written.
    """
    store = open_store(store_uri)
    run_id = metadata.get("mlflow_run_id")
    if run_id:
        for version in sorted(store.versions(model_name))[-RECENT_VERSIONS_CHECKED:][::-1]:
            try:
                published = store.read_metadata(model_name, version)
            except StoreError:
                continue  # an unreadable version is nobody's to reuse, and no reason to stop
            if published.get("mlflow_run_id") == run_id:
                return version, store.version_uri(model_name, version)
    version = store.publish(model_name, model_path, metadata)
    return version, store.version_uri(model_name, version)
