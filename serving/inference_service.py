"""Build the KServe InferenceService for a model version, with the ``kserve`` SDK's typed classes.

The object is the same for both targets: the local runtime (``serving.local``) gives it the
meaning KServe's Knative mode gives it in the cluster, where ``KServeClient`` applies it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kserve import V1beta1InferenceService, V1beta1LoggerSpec

# KServe's sklearn server pins scikit-learn ~=1.5.1 (v0.15 to v0.20), the version this project
# trains with. Named explicitly: with protocolVersion v2 and no runtime, KServe would pick
# kserve-mlserver, whose lock has scikit-learn 1.6.1.
SKLEARN_RUNTIME = "kserve-sklearnserver"
# Adds the latest-/prev- host names that reach one revision directly (tag routing).
TAG_ROUTING_ANNOTATION = "serving.kserve.io/enable-tag-routing"
# Which model version an InferenceService serves: read by `mlops get` and the e2e tests.
MODEL_VERSION_LABEL = "mlops.example.com/model-version"
# The payload logger names each event's model version through this pod annotation (KServe's
# StorageInitializerSourceUriInternalAnnotationKey, on every predictor pod):
# spec.predictor.logger.metadataAnnotations copies it into the CloudEvent.
STORAGE_URI_ANNOTATION = "internal.serving.kserve.io/storage-initializer-sourceuri"
# The header the payload sink marks its mirrored (shadow) requests with; the logger passes it on
# in the CloudEvent's metadata (metadataHeaders, Go's canonical header form), so the sink does
# not count the canary's answers to mirrors as client traffic.
SHADOW_HEADER = "X-Mlops-Shadow"
# The payload sink's Service (manifests/base/payload-sink.yaml), in the model's namespace.
PAYLOAD_SINK_SERVICE = "mlops-payload-sink"
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def check_canary_percent(percent: int | None) -> None:
    """Refuse a ``canaryTrafficPercent`` outside 0..100 (``None`` removes the field).

    Raises:
        ValueError: Naming the field and the allowed range.
    """
    if percent is not None and not 0 <= percent <= 100:
        raise ValueError(
            f"canary_traffic_percent must be within 0..100 (or None to promote), got {percent}"
        )


@dataclass(frozen=True)
class PredictorSettings:
    """What the predictor of a deployed model looks like.

    Attributes:
        name: InferenceService name (a DNS-1035 label), also the served model's name.
        namespace: Kubernetes namespace.
        storage_uri: The model version directory (``s3://...`` or a local path).
        model_version: The store version being deployed.
        canary_traffic_percent: Share of traffic for this (latest) revision; ``None`` = all.
        service_account: ServiceAccount whose Secret carries the S3 credentials, if any.
        cpu: CPU request (small, so two revisions fit on a CI runner).
        memory: Memory request.
        cpu_limit: CPU limit.
        memory_limit: Memory limit: headroom for the sklearn server's imports and the model.
        payload_logger_url: Where KServe's payload logger posts every request and response
            (the canary analysis's sink, :func:`payload_sink_url`); ``None``: no logger.
    """

    name: str
    storage_uri: str
    model_version: int
    namespace: str = "default"
    canary_traffic_percent: int | None = None
    service_account: str | None = None
    cpu: str = "100m"
    memory: str = "256Mi"
    cpu_limit: str = "1"
    memory_limit: str = "1Gi"
    payload_logger_url: str | None = None

    def __post_init__(self) -> None:
        if not _DNS_1035.match(self.name):
            raise ValueError(
                f"name {self.name!r} is not a valid InferenceService name: use lowercase "
                "letters, digits and '-', starting with a letter (at most 63 characters)"
            )
        check_canary_percent(self.canary_traffic_percent)
        if not self.storage_uri:
            raise ValueError("storage_uri is empty: it must name the model version directory")


def payload_sink_url(namespace: str) -> str:
    """The in-cluster URL of the payload sink Service in ``namespace``."""
    return f"http://{PAYLOAD_SINK_SERVICE}.{namespace}.svc.cluster.local/"


def build_inference_service(settings: PredictorSettings) -> V1beta1InferenceService:
    """Return the InferenceService that serves ``settings.storage_uri`` with the sklearn runtime.

    Args:
        settings: The predictor's name, model location, canary share and resources.

    Returns:
        A typed ``V1beta1InferenceService`` (``modelFormat: sklearn``, ``protocolVersion: v2``).
    """
    from kserve import (
        V1beta1InferenceService,
        V1beta1InferenceServiceSpec,
        V1beta1ModelFormat,
        V1beta1ModelSpec,
        V1beta1PredictorSpec,
        constants,
    )
    from kubernetes.client import V1ObjectMeta, V1ResourceRequirements

    requests = {"cpu": settings.cpu, "memory": settings.memory}
    limits = {"cpu": settings.cpu_limit, "memory": settings.memory_limit}
    return V1beta1InferenceService(
        api_version=constants.KSERVE_V1BETA1,
        kind=constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=V1ObjectMeta(
            name=settings.name,
            namespace=settings.namespace,
            annotations={TAG_ROUTING_ANNOTATION: "true"},
            labels={MODEL_VERSION_LABEL: str(settings.model_version)},
        ),
        spec=V1beta1InferenceServiceSpec(
            predictor=V1beta1PredictorSpec(
                canary_traffic_percent=settings.canary_traffic_percent,
                service_account_name=settings.service_account,
                min_replicas=1,
                logger=_logger(settings.payload_logger_url),
                model=V1beta1ModelSpec(
                    model_format=V1beta1ModelFormat(name="sklearn"),
                    protocol_version="v2",
                    runtime=SKLEARN_RUNTIME,
                    storage_uri=settings.storage_uri,
                    resources=V1ResourceRequirements(requests=requests, limits=limits),
                ),
            )
        ),
    )


def _logger(url: str | None) -> V1beta1LoggerSpec | None:
    """Log requests and responses (mode ``all``) to ``url``, each naming its model version."""
    from kserve import V1beta1LoggerSpec

    if url is None:
        return None
    return V1beta1LoggerSpec(
        mode="all",
        url=url,
        metadata_annotations=[STORAGE_URI_ANNOTATION],
        metadata_headers=[SHADOW_HEADER],
    )


def to_dict(isvc: V1beta1InferenceService) -> dict[str, Any]:
    """Serialize to the camelCase dict the Kubernetes API and ``kubectl`` use."""
    from kserve import ApiClient

    return dict(ApiClient().sanitize_for_serialization(isvc))


def from_dict(data: dict[str, Any]) -> V1beta1InferenceService:
    """Deserialize a camelCase dict (from the API or a state file) into the typed class.

    KServe's own ``ApiClient.deserialize`` only looks up ``kserve.models``, but an
    InferenceService nests Kubernetes types (``V1ObjectMeta``, ``V1ResourceRequirements``),
    so this resolves class names in both model modules.
    """
    return _deserialize(data, "V1beta1InferenceService")


_PRIMITIVES = {"str", "int", "float", "bool", "object", "date", "datetime"}


def _deserialize(data: Any, type_name: str) -> Any:
    import kserve.models
    import kubernetes.client.models

    if data is None or type_name in _PRIMITIVES:
        return data
    if type_name.startswith("list["):
        return [_deserialize(item, type_name[5:-1]) for item in data]
    if type_name.startswith("dict("):
        value_type = type_name[5:-1].split(", ", 1)[1]
        return {key: _deserialize(value, value_type) for key, value in data.items()}
    cls = getattr(kserve.models, type_name, None) or getattr(
        kubernetes.client.models, type_name, None
    )
    if cls is None:
        # The SDK names Knative types it does not ship (the traffic target in the status):
        # keep those as the plain dicts the API returned.
        return data
    kwargs = {
        attr: _deserialize(data[key], cls.openapi_types[attr])
        for attr, key in cls.attribute_map.items()
        if key in data
    }
    return cls(**kwargs)


@dataclass(frozen=True)
class TrafficSpec:
    """What a traffic write sets: the canary's share and the model the latest revision serves.

    A rollout remembers the ``TrafficSpec`` it last wrote; before each write it checks the
    InferenceService still has it, so a human's promote, rollback or deploy is never undone.

    Attributes:
        canary_percent: ``spec.predictor.canaryTrafficPercent`` (``None``: promoted).
        storage_uri: ``spec.predictor.model.storageUri``.
    """

    canary_percent: int | None
    storage_uri: str


class TrafficChangedError(RuntimeError):
    """Someone else changed the traffic since the rollout last set it: the rollout stops.

    Attributes:
        by: Who, in words: ``a promote``, ``a rollback``, ``a new deploy``, ...
    """

    def __init__(self, by: str, message: str) -> None:
        """Say who changed the traffic (``by``) and what was found (``message``)."""
        super().__init__(message)
        self.by = by


class RolloutLockedError(RuntimeError):
    """Another rollout of the InferenceService holds its lock (local file lock, or Lease)."""


def traffic_spec(isvc: dict[str, Any]) -> TrafficSpec:
    """The ``TrafficSpec`` of an InferenceService (camelCase dict, as the API returns it)."""
    predictor = isvc.get("spec", {}).get("predictor", {})
    percent = predictor.get("canaryTrafficPercent")
    uri = str((predictor.get("model") or {}).get("storageUri", ""))
    return TrafficSpec(None if percent is None else int(percent), uri)


def check_traffic(isvc: dict[str, Any], expected: TrafficSpec | None) -> None:
    """Refuse to write over a traffic change someone else made.

    Args:
        isvc: The InferenceService as read just before the write.
        expected: What the writer last set; ``None``: an unconditional write (a human's).

    Raises:
        TrafficChangedError: When ``isvc``'s spec is no longer ``expected``, naming the change.
    """
    found = traffic_spec(isvc)
    if expected is None or found == expected:
        return
    if found.storage_uri != expected.storage_uri:
        by = "a new deploy"
        what = f"the latest revision now serves {found.storage_uri}"
    elif found.canary_percent is None:
        by, what = "a promote", "canaryTrafficPercent was removed"
    elif found.canary_percent == 0:
        by, what = "a rollback", "canaryTrafficPercent is 0"
    else:
        by, what = "a traffic change", f"canaryTrafficPercent is {found.canary_percent}"
    had = "removed" if expected.canary_percent is None else f"{expected.canary_percent}"
    raise TrafficChangedError(
        by,
        f"stopped by {by}: {what} (the rollout had set canaryTrafficPercent {had}); "
        "the traffic stays as it was set",
    )
