"""What the web form shows: the features, ranges, categories, classes and example rows.

Read from a version's ``metadata.json``: the loaded revision taking the most traffic
(``mlops serve``), the newest version in the store, or, in the cluster, the version the
InferenceService serves, with its signature checked (``serving.form`` serves these).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops.store import StoreError, open_store

if TYPE_CHECKING:
    from serving.runtime import CanaryRouter


class FormUnavailable(RuntimeError):
    """No model version to describe the form with (nothing loaded, nothing published)."""


def form_schema(
    model_name: str, model_version: str, metadata: dict[str, Any], feature_names: list[str]
) -> dict[str, Any]:
    """What the page needs to draw the form, from a version's ``metadata.json``.

    Args:
        model_name: The served model's name (the infer path's ``{name}``).
        model_version: The store version the ranges and examples come from.
        metadata: The version's ``metadata.json``.
        feature_names: The model's features, in the order the model takes them.

    Returns:
        ``{"model", "version", "input_kind", "features": [{"name", "type", "min", "max",
        "mean", "categories"}], "classes", "class_names", "examples": [{"label", "values"}]}``;
        ranges are None and examples empty for a version published without them, ``type``
        is ``numeric`` and ``input_kind`` ``tensor`` for one published before tables.
    """
    reference = metadata.get("reference_statistics") or {}
    stats = reference.get("features") or {}
    types = metadata.get("feature_types") or {}
    categories = metadata.get("feature_categories") or {}
    features = []
    for name in feature_names:
        kind = "categorical" if types.get(name) == "categorical" else "numeric"
        feature: dict[str, Any] = {"name": name, "type": kind}
        feature |= {key: stats.get(name, {}).get(key) for key in ("min", "max", "mean")}
        if kind == "categorical":
            feature["categories"] = [str(c) for c in categories.get(name) or []]
        features.append(feature)
    examples = [
        {"label": example["label"], "values": [example["features"][n] for n in feature_names]}
        for example in reference.get("examples") or []
        if all(n in example.get("features", {}) for n in feature_names)
    ]
    classes = metadata.get("classes") or reference.get("classes")
    names = metadata.get("class_names")
    if not (isinstance(names, list) and classes and len(names) == len(classes)):
        names = [str(c) for c in classes] if classes else None
    return {
        "model": model_name,
        "version": model_version,
        "input_kind": "dataframe" if metadata.get("input_kind") == "dataframe" else "tensor",
        "features": features,
        "classes": classes,
        "class_names": names,
        "examples": examples,
    }


def router_schema(router: CanaryRouter) -> dict[str, Any]:
    """The form of the loaded revision taking the most traffic (``mlops serve``).

    Raises:
        FormUnavailable: When no revision is loaded.
    """
    loaded = [r for r in router.routes.routes if not r.failure]
    if not loaded:
        raise FormUnavailable(f"no revision of {router.name!r} is loaded yet")
    model = max(loaded, key=lambda r: r.percent).model
    return form_schema(
        router.name, model.revision.model_version, model.metadata, model.feature_names
    )


def store_schema(store_uri: str, model_name: str) -> dict[str, Any]:
    """The form of the newest version in the store (the cluster frontend).

    The pipeline publishes a version only when it passed the gate, just before deploying it, so
    the newest version is the one served or being rolled out. Its metadata is shown as text
    only (ranges, example values), so it is read without the signing key.

    Raises:
        FormUnavailable: When the store holds no version of ``model_name``.
        StoreError: When the store cannot be read.
    """
    store = open_store(store_uri)
    versions = store.versions(model_name)
    if not versions:
        raise FormUnavailable(f"the store {store_uri} holds no version of {model_name!r} yet")
    metadata = store.read_metadata(model_name, max(versions))
    names = [str(n) for n in metadata.get("feature_names") or []]
    return form_schema(model_name, str(max(versions)), metadata, names)


def served_schema(store_uri: str, model_name: str, namespace: str) -> dict[str, Any]:
    """The form of the version the InferenceService serves (the cluster frontend).

    The stable version (all traffic, or the ``prev`` side while a canary runs), from the
    InferenceService's traffic status as ``mlops`` reads it (``serving.deploy``), not the
    newest version in the store: a newer one may take other columns, or never have served. The
    page builds requests in its ``feature_names`` order, so its metadata is read only with a
    valid signature (``mlops.signing``, the key ``MLOPS_SIGNING_KEY``): whoever can write the
    store cannot reorder the columns.

    Raises:
        FormUnavailable: When the InferenceService is not deployed or serves no known version.
        StoreError: When the version cannot be read or its signature does not check out.
        RuntimeError: When the Kubernetes API cannot be read.
    """
    import tempfile

    from serving.deploy import deployed_versions

    versions = deployed_versions(
        model_name, "kubernetes", state_dir=Path(tempfile.gettempdir()), namespace=namespace
    )
    if versions is None or versions.stable is None:
        raise FormUnavailable(
            f"InferenceService {model_name!r} in namespace {namespace!r} serves no known "
            "model version yet"
        )
    return _signed_schema(store_uri, model_name, int(versions.stable))


@functools.lru_cache(maxsize=16)
def _signed_schema(store_uri: str, model_name: str, version: int) -> dict[str, Any]:
    # A version is written once, so its schema is too: read and checked once per version.
    from mlops import signing

    store = open_store(store_uri)
    where = store.version_uri(model_name, version)
    metadata = store.read_metadata(model_name, version)
    try:
        signing.verify(metadata, model_name, version, signing.signing_key(), where)
    except signing.SignatureError as err:
        raise StoreError(f"the form of {where} is not shown: {err}") from err
    names = [str(n) for n in metadata.get("feature_names") or []]
    return form_schema(model_name, str(version), metadata, names)
