"""One CloudEvent of KServe's payload logger, read from its headers and checked.

What the agent sends, as kserve/kserve@v0.20.0 writes it (cited beside each fixture in
``tests/fixtures/kserve_payload_logger/README.md``): binary content mode (cloudevents sdk-go
v2.16.2), so the attributes are ``Ce-*`` headers and the body is the payload itself.

- ``Ce-Id``: the client's ``Ce-Id`` header or a new UUID, the same for a request and its
  response (``pkg/logger/handler.go``, ``getOrCreateID``);
- ``Ce-Type``: ``org.kubeflow.serving.inference.request`` or ``...response``;
- ``Ce-Source``: ``http://localhost:9081/`` on every pod: the injector passes ``--source-uri
  pod.Name`` while a generated pod's name is still empty and the agent then falls back to
  ``http://localhost:<port>/`` (``pkg/webhook/admission/pod/agent_injector.go``,
  ``cmd/agent/main.go``). It names no revision, so it is not read;
- ``Ce-Time``: RFC 3339 with nanoseconds, when the request arrived, resp. the response ended;
- ``Ce-Inferenceservicename``, ``Ce-Namespace``: the pod's labels and namespace;
- ``Ce-Metadata``: JSON of the request headers the logger's ``metadataHeaders`` lists (Go's
  canonical names); ``Ce-Annotations``: JSON of the pod annotations its
  ``metadataAnnotations`` lists: we list KServe's storage URI annotation, which is on every
  pod of a revision, so each event names the model version that answered.

Everything here is hostile input: the model name becomes part of a URL (the shadow mirror) and
every value a metric label, so each is checked against what the agent can send and refused
otherwise, with the attribute named.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from serving.inference_service import SHADOW_HEADER, STORAGE_URI_ANNOTATION
from serving.knative_hosts import is_dns_1035_label

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
KINDS = {REQUEST_TYPE: "request", RESPONSE_TYPE: "response"}
# Longest Ce-Id accepted: a UUID is 36; a client's own id may be longer, not unboundedly.
MAX_ID = 128
# Longest Ce-Metadata / Ce-Annotations accepted (one header and one annotation each here).
MAX_JSON_HEADER = 4096
MAX_URI = 1024
# Store versions are counters: more digits than this is not a version the pipeline wrote.
MAX_VERSION_DIGITS = 9
# An InferenceService name also makes the tag route's host `latest-<name>-predictor`, a DNS
# label of at most 63 characters: 63 - len("latest-") - len("-predictor").
MAX_MODEL_NAME = 46


@dataclass(frozen=True)
class LoggedEvent:
    """The checked attributes of one logged request or response.

    Attributes:
        kind: ``request`` or ``response``.
        event_id: ``Ce-Id``.
        model: The InferenceService (a DNS-1035 label, at most ``MAX_MODEL_NAME``).
        version: The model version from the storage URI (decimal), ``""`` when none is named.
        storage_uri: The storage URI the pod serves, ``""`` when none is named.
        time: ``Ce-Time``.
        shadow: Whether the request is the sink's own mirror (``SHADOW_HEADER`` in the metadata).
    """

    kind: str
    event_id: str
    model: str
    version: str
    storage_uri: str
    time: datetime
    shadow: bool


def _json_header(headers: dict[str, str], name: str) -> dict[str, object]:
    raw = headers.get(name, "")
    if not raw:
        return {}
    if len(raw) > MAX_JSON_HEADER:
        raise ValueError(f"{name} is longer than {MAX_JSON_HEADER} characters")
    try:
        parsed = json.loads(raw)
    except ValueError as err:
        raise ValueError(f"{name} is not JSON: {err}") from err
    if not isinstance(parsed, dict):
        raise ValueError(f"{name} must be a JSON object, not {type(parsed).__name__}")
    return parsed


def version_of_uri(uri: str) -> str:
    """The version a storage URI ``<store>/<model>/<version>`` names; ``""`` when none."""
    tail = uri.rstrip("/").rsplit("/", 1)[-1]
    if tail.isascii() and tail.isdigit() and len(tail) <= MAX_VERSION_DIGITS:
        return str(int(tail))
    return ""


def parse_event(headers: dict[str, str], namespace: str | None = None) -> LoggedEvent:
    """Read and check one event's attributes (``headers`` with lower-case names).

    Args:
        headers: The request's headers, names lower-cased.
        namespace: The only ``Ce-Namespace`` accepted (the sink's own); None accepts any.

    Returns:
        The event.

    Raises:
        ValueError: Naming the attribute that is missing or malformed.
    """
    kind = KINDS.get(headers.get("ce-type", ""))
    if kind is None:
        raise ValueError(f"ce-type must be {REQUEST_TYPE} or {RESPONSE_TYPE}")
    event_id = headers.get("ce-id", "")
    if (
        not event_id
        or len(event_id) > MAX_ID
        or not event_id.isascii()
        or not event_id.isprintable()
    ):
        raise ValueError(f"ce-id must be 1 to {MAX_ID} printable ASCII characters")
    model = headers.get("ce-inferenceservicename", "")
    if not is_dns_1035_label(model) or len(model) > MAX_MODEL_NAME:
        raise ValueError(
            f"ce-inferenceservicename {model[:80]!r} is not an InferenceService name: expected "
            f"a DNS-1035 label of at most {MAX_MODEL_NAME} characters"
        )
    if namespace is not None and headers.get("ce-namespace") != namespace:
        raise ValueError(f"ce-namespace must be {namespace!r}, this sink's namespace")
    try:
        at = datetime.fromisoformat(headers.get("ce-time", "").replace("Z", "+00:00"))
    except ValueError as err:
        raise ValueError(f"ce-time {headers.get('ce-time', '')[:40]!r} is not RFC 3339") from err
    if at.tzinfo is None:
        raise ValueError("ce-time must name its UTC offset (RFC 3339)")
    metadata = _json_header(headers, "ce-metadata")
    uri = _json_header(headers, "ce-annotations").get(STORAGE_URI_ANNOTATION, "")
    if not isinstance(uri, str) or len(uri) > MAX_URI:
        raise ValueError(f"ce-annotations' {STORAGE_URI_ANNOTATION} must be a storage URI")
    version = version_of_uri(uri)
    return LoggedEvent(
        kind, event_id, model, version, uri if version else "", at, SHADOW_HEADER in metadata
    )
