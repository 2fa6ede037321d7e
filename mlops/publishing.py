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


def model_schema(
    model: Any,
    feature_types: dict[str, str],
    class_names: dict[str, str] | None = None,
) -> dict[str, Any]:
    """What a client must know to call the model, as ``build_metadata`` records it.

    Args:
        model: The fitted ``Pipeline`` (its ``classes_`` and, for text features, the
            categories its encoder learnt).
        feature_types: ``{name: "numeric" | "categorical"}`` of every feature, in order.
        class_names: ``{str(class): display name}`` (a built-in dataset's ``target_names``);
            a class without one is shown as ``str(class)``.
    """
    from mlops.training import CATEGORICAL, input_kind, json_classes, label_datatype
    from mlops.validation import SHOWN_CATEGORIES

    classes = json_classes(model)
    names = class_names or {}
    return {
        "feature_types": dict(feature_types),
        "feature_categories": {
            name: categories[:SHOWN_CATEGORIES]
            for name, categories in _learnt_categories(model).items()
            if feature_types.get(name) == CATEGORICAL
        },
        "input_kind": input_kind(feature_types),
        "classes": classes,
        "class_names": [names.get(str(c), str(c)) for c in classes],
        "label_datatype": label_datatype(classes),
    }


def _learnt_categories(model: Any) -> dict[str, list[str]]:
    """The sorted categories the one-hot encoder learnt, per text feature (none: ``{}``)."""
    from mlops.training import MISSING_CATEGORY

    columns = dict(getattr(model, "steps", [])).get("columns")
    if columns is None or "categorical" not in columns.named_transformers_:
        return {}
    text = columns.named_transformers_["categorical"]
    encoder = text.named_steps["encode"]
    names = columns.transformers_[[t[0] for t in columns.transformers_].index("categorical")][2]
    # The imputer's fill for a missing value is no category a client sends: it sends null.
    return {
        str(name): sorted(str(c) for c in categories if str(c) and str(c) != MISSING_CATEGORY)
        for name, categories in zip(names, encoder.categories_, strict=True)
    }


def build_metadata(
    model_path: Path,
    metrics: dict[str, float],
    data_fingerprint: str,
    params: dict[str, Any],
    reference: dict[str, Any],
    feature_names: list[str],
    sklearn_version: str,
    schema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``metadata.json`` of a version: what it is, how it was made, how to check it.

    Args:
        model_path: The model file (its sha256 is recorded).
        metrics: Holdout metrics.
        data_fingerprint: sha256 of the training table.
        params: How it was trained (estimator, hyperparameters, ...).
        reference: ``mlops.validation.reference_statistics`` of the training table.
        feature_names: The input columns, in order.
        sklearn_version: The scikit-learn that fitted it.
        schema: ``model_schema`` of the model: ``feature_types``, ``feature_categories``,
            ``input_kind``, ``classes``, ``class_names``, ``label_datatype``; absent keys are
            left out (an older caller: every feature numeric, a tensor input).
    """
    import mlops

    known = (
        "feature_types",
        "feature_categories",
        "input_kind",
        "classes",
        "class_names",
        "label_datatype",
    )
    recorded = {key: (schema or {})[key] for key in known if key in (schema or {})}
    if "feature_types" in recorded:  # in column order (a KFP artifact's metadata sorts keys)
        types = recorded["feature_types"]
        recorded["feature_types"] = {name: types.get(name, "numeric") for name in feature_names}
    return {
        **recorded,
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
