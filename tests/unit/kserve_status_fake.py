"""A Kubernetes API for InferenceServices on loopback, with KServe's and Knative's status logic.

The fake sits at the Kubernetes API boundary: the real ``KServeClient`` (and the kubernetes
client's urllib3 pool under it) talks HTTP to it. Behind the API it models what the cluster does
with an InferenceService in Knative mode, after KServe v0.20.0:

- ``pkg/controller/v1beta1/inferenceservice/reconcilers/knative/ksvc_reconciler.go``
  (``createKnativeService``): the Knative Service's traffic comes from ``canaryTrafficPercent``
  and the status's ``latestRolledoutRevision``; the percent is ignored (latest gets 100%) while
  nothing has rolled out; the Knative Service is updated only when it differs.
- ``pkg/apis/serving/v1beta1/inference_service_status.go`` (``PropagateStatus``): the
  ``latestRolledoutRevision`` / ``previousRolledoutRevision`` bookkeeping, including the
  rollback branch that re-points ``latestRolledoutRevision`` at the previous one, and
  ``status.observedGeneration`` copied from the Knative Service, not the InferenceService.
- Knative Serving: one revision per template change, ``latestRevision`` targets routed to the
  latest *ready* revision, the Service's ``observedGeneration`` its own generation.
- The Revisions (``serving.knative.dev/v1``), readable by name: Knative creates each with the
  template's metadata (``MakeRevision`` in knative/serving v0.48.1, KServe v0.20.0's pin, plus
  its own ``serving.knative.dev/*`` labels); KServe builds that metadata (``buildObjectMeta``
  in ``.../components/predictor.go``, ``createKnativeService``) from the InferenceService's
  labels, less ``serviceLabelDisallowedList``, and annotations, less
  ``ServiceAnnotationDisallowedList``, plus the storage URI annotation.

Each GET of an InferenceService first runs one controller round (KServe reconciles with the
status it has, then Knative reconciles), so successive polls see a rollout progress.

- A rolled-out revision is one that took 100% as the latest ready revision: ``PropagateStatus``
  marks it so for ``canaryTrafficPercent: 100`` as for a promote (no field), and only a
  rollback *of the rolled-out latest revision* re-points ``latestRolledoutRevision`` at the
  previous one (in two rounds: first the rolled-out revision, the latest itself, takes the
  ``prev`` 100%). A canary rolled back from a share below 100 was never rolled out.
- Leases (``coordination.k8s.io/v1``), as the API server's generic registry stores any object
  (k8s.io/apiserver ``pkg/registry/generic/registry/store.go`` at kubernetes v1.31): create
  answers 409 AlreadyExists for an existing name; an update carrying another
  ``resourceVersion`` answers 409 Conflict; a delete whose ``preconditions.resourceVersion``
  differs answers 409 Conflict. The fields are the ``LeaseSpec`` of k8s.io/api
  ``coordination/v1/types.go`` (holderIdentity, leaseDurationSeconds, acquireTime,
  renewTime); nothing expires them on the server: holders judge expiry themselves.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

_PATHS = {
    "inferenceservices": re.compile(
        r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices(?:/([^/]+))?$"
    ),
    "revisions": re.compile(
        r"^/apis/serving\.knative\.dev/v1/namespaces/([^/]+)/revisions(?:/([^/]+))?$"
    ),
    "leases": re.compile(
        r"^/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases(?:/([^/]+))?$"
    ),
}
_TAG_ROUTING = "serving.kserve.io/enable-tag-routing"
SOURCE_URI_ANNOTATION = "internal.serving.kserve.io/storage-initializer-sourceuri"
# KServe v0.20.0's defaults (pkg/constants): what does not reach the revision template.
_LABELS_HELD_BACK = ("networking.knative.dev/visibility",)
_ANNOTATIONS_HELD_BACK = (
    "autoscaling.knative.dev/min-scale",
    "autoscaling.knative.dev/max-scale",
    SOURCE_URI_ANNOTATION,
    "kubectl.kubernetes.io/last-applied-configuration",
    "modelFormat",
)


@dataclass(frozen=True)
class Fault:
    """The answer to the next ``method`` request on ``resource``.

    ``processed``: the request is carried out, then its answer is lost.
    """

    method: str
    status: int
    reason: str = "InternalError"
    message: str = "injected failure"
    processed: bool = False
    resource: str = "inferenceservices"


@dataclass
class Revision:
    """A Knative revision: ``ready`` is None while it starts, then True or False."""

    name: str
    template: dict[str, Any]
    rounds_to_start: int
    ready: bool | None = None
    generation: int = 1

    def resource(self, namespace: str, service: str) -> dict[str, Any]:
        """The Revision as the API returns it: the template's metadata plus Knative's labels."""
        knative = {
            "serving.knative.dev/configuration": service,
            "serving.knative.dev/service": service,
            "serving.knative.dev/configurationGeneration": str(self.generation),
        }
        ready = {None: "Unknown", True: "True", False: "False"}[self.ready]
        return {
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Revision",
            "metadata": {
                "name": self.name,
                "namespace": namespace,
                "labels": {**self.template["metadata"]["labels"], **knative},
                "annotations": dict(self.template["metadata"]["annotations"]),
            },
            "spec": copy.deepcopy(self.template["spec"]),
            "status": {"conditions": [{"type": "Ready", "status": ready}]},
        }


@dataclass
class KnativeService:
    """The predictor's Knative Service: spec (template, traffic) and the status Knative writes."""

    name: str
    generation: int = 0
    template: dict[str, Any] | None = None
    traffic: list[dict[str, Any]] = field(default_factory=list)
    revisions: list[Revision] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)


def ksvc_traffic(canary: int | None, rolled_out: str, tags: bool) -> list[dict[str, Any]]:
    """``createKnativeService``: the traffic block KServe writes into the Knative Service."""
    latest: dict[str, Any] = {"latestRevision": True, "percent": 100}
    if tags:
        latest["tag"] = "latest"
    if canary is None or not rolled_out:
        return [latest]
    targets = [{**latest, "percent": canary}]
    if canary < 100:
        prev = {"revisionName": rolled_out, "latestRevision": False, "percent": 100 - canary}
        targets.append(prev | {"tag": "prev"})
    return targets


def revision_template_metadata(
    isvc: dict[str, Any], labels_held_back: tuple[str, ...] = ()
) -> dict[str, dict[str, str]]:
    """``buildObjectMeta`` + ``createKnativeService``: the ksvc's ``spec.template.metadata``."""
    metadata = isvc["metadata"]
    labels = {
        **metadata.get("labels", {}),
        "serving.kserve.io/inferenceservice": metadata["name"],
        "component": "predictor",
    }
    annotations = {
        k: v for k, v in metadata.get("annotations", {}).items() if k not in _ANNOTATIONS_HELD_BACK
    }
    annotations[SOURCE_URI_ANNOTATION] = isvc["spec"]["predictor"]["model"]["storageUri"]
    held_back = (*_LABELS_HELD_BACK, *labels_held_back)
    return {
        "labels": {k: v for k, v in labels.items() if k not in held_back},
        "annotations": annotations,
    }


def propagate_status(status: dict[str, Any], service: dict[str, Any]) -> None:
    """``PropagateStatus`` for the predictor: copy the Knative Service's status into ``status``."""
    spec = dict(status.get("components", {}).get("predictor", {}))
    latest_ready = service.get("latestReadyRevisionName", "")
    spec["latestCreatedRevision"] = service.get("latestCreatedRevisionName", "")
    per_revision: dict[str, int] = {}
    for target in service.get("traffic", []):
        if target.get("percent") is not None:
            name = target.get("revisionName", "")
            per_revision[name] = per_revision.get(name, 0) + target["percent"]
    for target in service.get("traffic", []):
        if target.get("revisionName") != latest_ready or not target.get("latestRevision"):
            continue
        percent = target.get("percent")
        if spec.get("latestRolledoutRevision", "") != latest_ready:
            if percent == 100:  # the last revision that is fully rolled out
                spec["previousRolledoutRevision"] = spec.get("latestRolledoutRevision", "")
                spec["latestRolledoutRevision"] = latest_ready
        elif (
            latest_ready == spec["latestCreatedRevision"] and percent is not None and percent < 100
        ):
            # Rolled out with 100%, then rolled back: KServe re-points latestRolledoutRevision
            # when the traffic on this revision still adds up to 100.
            previous = spec.get("previousRolledoutRevision", "")
            if per_revision.get(latest_ready) == 100 and previous:
                spec["latestRolledoutRevision"] = previous
    spec["latestReadyRevision"] = latest_ready
    conditions = {c["type"]: c for c in service.get("conditions", [])}
    ready = conditions.get("Ready")
    if ready and ready["status"] == "True":
        spec["url"] = service.get("url", "")
    for ours, theirs in (
        ("PredictorReady", "Ready"),
        ("PredictorRouteReady", "RoutesReady"),
        ("PredictorConfigurationReady", "ConfigurationsReady"),
    ):
        if theirs in conditions:
            _set_condition(status, {**conditions[theirs], "type": ours})
    spec["traffic"] = copy.deepcopy(service.get("traffic", []))
    status.setdefault("components", {})["predictor"] = {k: v for k, v in spec.items() if v != ""}
    status["observedGeneration"] = service.get("observedGeneration", 0)
    # The isvc's Ready follows PredictorReady (IngressReady is taken as True here).
    conditions = status.get("conditions", [])
    predictor = next((c for c in conditions if c["type"] == "PredictorReady"), None)
    if predictor:
        _set_condition(status, {**predictor, "type": "Ready"})
        if predictor["status"] == "True":
            status["url"] = spec["url"]


def _set_condition(status: dict[str, Any], condition: dict[str, Any]) -> None:
    conditions = [c for c in status.setdefault("conditions", []) if c["type"] != condition["type"]]
    status["conditions"] = [*conditions, condition]


def _condition(kind: str, state: str, reason: str = "", message: str = "") -> dict[str, Any]:
    found = {"type": kind, "status": state, "reason": reason, "message": message}
    return {k: v for k, v in found.items() if v}


class FakeCluster:
    """InferenceServices behind a Kubernetes-shaped HTTP API; see the module docstring.

    Attributes:
        failing_uris: storageUris whose revisions fail (the model does not load).
        slow_uris: storageUri -> controller rounds its revision needs to start (default 1).
        labels_held_back: inferenceservice-config's ``serviceLabelDisallowedList`` additions.
        gone_revisions: Revision names the API answers 404 for (deleted).
        faults: answers to the next requests, in order (see ``Fault``).
        replaced: each accepted replace's ``canaryTrafficPercent`` (``None``: no field), in order.
        writes_first: another writer's changes to an InferenceService's spec, each applied
            just before the next replace arrives (it read before them: its replace gets 409).
        log: (method, settled) per request (``GET revisions`` for a Revision); ``settled``
            (InferenceService GETs only) says whether a further controller round would change
            nothing.
    """

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.services: dict[tuple[str, str], KnativeService] = {}
        self.failing_uris: set[str] = set()
        self.slow_uris: dict[str, int] = {}
        self.labels_held_back: tuple[str, ...] = ()
        self.gone_revisions: set[str] = set()
        self.faults: list[Fault] = []
        self.log: list[tuple[str, bool | None]] = []
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes_first: list[Callable[[dict[str, Any]], None]] = []
        self.replaced: list[int | None] = []
        self._lock = threading.Lock()
        self._version = 0

    # -- the controllers ------------------------------------------------------------------

    def _round(self, key: tuple[str, str]) -> None:
        isvc = self.objects[key]
        service = self.services.setdefault(key, KnativeService(f"{key[1]}-predictor"))
        predictor = isvc["spec"]["predictor"]
        status = isvc.setdefault("status", {})
        rolled_out = status.get("components", {}).get("predictor", {})
        template = {
            "spec": {k: v for k, v in predictor.items() if k != "canaryTrafficPercent"},
            "metadata": revision_template_metadata(isvc, self.labels_held_back),
        }
        tags = isvc["metadata"].get("annotations", {}).get(_TAG_ROUTING) == "true"
        traffic = ksvc_traffic(
            predictor.get("canaryTrafficPercent"),
            rolled_out.get("latestRolledoutRevision", ""),
            tags,
        )
        if (template, traffic) != (service.template, service.traffic):
            service.template, service.traffic = template, traffic
            service.generation += 1
        propagate_status(status, service.status)  # the status KServe read before its update
        self._version += 1
        isvc["metadata"]["resourceVersion"] = str(self._version)
        self._knative(service)

    def _knative(self, service: KnativeService) -> None:
        assert service.template is not None
        latest = service.revisions[-1] if service.revisions else None
        if latest is None or latest.template != service.template:
            uri = service.template["spec"]["model"]["storageUri"]
            number = len(service.revisions) + 1
            latest = Revision(
                f"{service.name}-{number:05d}",
                service.template,
                self.slow_uris.get(uri, 1),
                generation=number,
            )
            service.revisions.append(latest)
        elif latest.ready is None:
            latest.rounds_to_start -= 1
            if latest.rounds_to_start <= 0:
                uri = latest.template["spec"]["model"]["storageUri"]
                latest.ready = uri not in self.failing_uris
        ready = next((r for r in reversed(service.revisions) if r.ready), None)
        routed = []
        for target in service.traffic:
            if target["latestRevision"]:
                if ready is None:
                    continue
                target = {**target, "revisionName": ready.name}
            routed.append(target)
        configuration = {
            None: _condition("ConfigurationsReady", "Unknown", "RevisionMissing"),
            True: _condition("ConfigurationsReady", "True"),
            False: _condition(
                "ConfigurationsReady",
                "False",
                "RevisionFailed",
                f'Revision "{latest.name}" failed with message: model.joblib did not load.',
            ),
        }[latest.ready]
        route = _condition("RoutesReady", "True" if ready else "Unknown")
        worst = next((c for c in (configuration, route) if c["status"] != "True"), None)
        service.status = {
            "observedGeneration": service.generation,
            "latestCreatedRevisionName": latest.name,
            "latestReadyRevisionName": ready.name if ready else "",
            "traffic": routed,
            "url": f"http://{service.name}.example.com",
            "conditions": [configuration, route, {**(worst or route), "type": "Ready"}],
        }

    def _settled(self, key: tuple[str, str]) -> bool:
        """Whether another controller round would change nothing (InferenceService or ksvc)."""
        saved = (copy.deepcopy(self.objects), copy.deepcopy(self.services), self._version)
        now = self._snapshot(key)
        self._round(key)
        after = self._snapshot(key)
        self.objects, self.services, self._version = saved
        return now == after

    def _snapshot(self, key: tuple[str, str]) -> tuple[dict[str, Any], KnativeService]:
        isvc = copy.deepcopy(self.objects[key])
        isvc["metadata"].pop("resourceVersion")
        return isvc, copy.deepcopy(self.services[key])

    # -- the API --------------------------------------------------------------------------

    def handle(
        self,
        method: str,
        namespace: str,
        name: str | None,
        body: Any,
        resource: str = "inferenceservices",
    ) -> Response:
        """Answer one API request as the Kubernetes API server would."""
        fault = next((f for f in self.faults if (f.method, f.resource) == (method, resource)), None)
        answer = {"inferenceservices": self._answer, "leases": self._lease}.get(
            resource, self._revision
        )
        if fault is None:
            return answer(method, namespace, name, body)
        self.faults.remove(fault)
        if fault.processed:
            answer(method, namespace, name, body)
        else:
            self.log.append((_logged(method, resource), None))
        return _status(fault.status, fault.reason, fault.message)

    def _revision(self, method: str, namespace: str, name: str | None, body: Any) -> Response:
        """Revisions are Knative's: readable by name, nothing else."""
        self.log.append((_logged(method, "revisions"), None))
        if method != "GET" or name is None:
            return _status(405, "MethodNotAllowed", f"{method} is not allowed here")
        for (ns, _), service in self.services.items():
            found = next((r for r in service.revisions if r.name == name), None)
            if ns == namespace and found and name not in self.gone_revisions:
                return _json(200, found.resource(namespace, service.name))
        return _status(404, "NotFound", f'revisions.serving.knative.dev "{name}" not found')

    def _lease(self, method: str, namespace: str, name: str | None, body: Any) -> Response:
        """The generic registry's create / get / update / delete, with resourceVersions."""
        self.log.append((_logged(method, "leases"), None))
        key = (namespace, name or (body or {}).get("metadata", {}).get("name", ""))
        current = self.leases.get(key)
        missing = _status(404, "NotFound", f'leases.coordination.k8s.io "{key[1]}" not found')
        conflict = _status(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on leases.coordination.k8s.io "{key[1]}": the object '
            "has been modified; please apply your changes to the latest version and try again",
        )
        if method == "POST":
            if current is not None:
                return _status(
                    409, "AlreadyExists", f'leases.coordination.k8s.io "{key[1]}" already exists'
                )
            return _json(201, self._store_lease(key, body))
        if current is None:
            return missing
        if method == "GET":
            return _json(200, current)
        if method == "PUT":
            wanted = body["metadata"].get("resourceVersion")
            if wanted and wanted != current["metadata"]["resourceVersion"]:
                return conflict
            return _json(200, self._store_lease(key, body))
        if method == "DELETE":
            wanted = ((body or {}).get("preconditions") or {}).get("resourceVersion")
            if wanted and wanted != current["metadata"]["resourceVersion"]:
                return conflict
            del self.leases[key]
            return _json(200, {"kind": "Status", "status": "Success"})
        return _status(405, "MethodNotAllowed", f"{method} is not allowed here")

    def _store_lease(self, key: tuple[str, str], body: dict[str, Any]) -> dict[str, Any]:
        self._version += 1
        stored = {k: v for k, v in body.items() if k != "status"}
        stored["metadata"] = {
            **body["metadata"],
            "namespace": key[0],
            "resourceVersion": str(self._version),
        }
        self.leases[key] = stored
        return stored

    def _answer(self, method: str, namespace: str, name: str | None, body: Any) -> Response:
        key = (namespace, name or body["metadata"]["name"])
        settled = None
        if method == "GET" and key in self.objects:
            self._round(key)
            settled = self._settled(key)
        self.log.append((method, settled))
        if method == "POST":
            if key in self.objects:
                return _status(409, "AlreadyExists", f'inferenceservices "{key[1]}" already exists')
            stored = {k: v for k, v in body.items() if k != "status"}
            stored["metadata"] |= {"namespace": namespace, "generation": 1, "uid": key[1]}
            self.objects[key] = stored
            self._version += 1
            stored["metadata"]["resourceVersion"] = str(self._version)
            return _json(201, stored)
        if key not in self.objects:
            return _status(404, "NotFound", f'inferenceservices "{key[1]}" not found')
        current = self.objects[key]
        if method == "GET":
            return _json(200, current)
        if method == "PUT":
            if self.writes_first:
                self.writes_first.pop(0)(current["spec"])
                self._version += 1
                current["metadata"]["resourceVersion"] = str(self._version)
            wanted = body["metadata"].get("resourceVersion")
            if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
                return _status(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on inferenceservices "{key[1]}": the object '
                    "has been modified; please apply your changes to the latest version",
                )
            generation = current["metadata"]["generation"]
            if body["spec"] != current["spec"]:
                generation += 1
            self._version += 1
            current["metadata"] = body["metadata"] | {
                "namespace": namespace,
                "generation": generation,
                "resourceVersion": str(self._version),
            }
            current["spec"] = body["spec"]
            self.replaced.append(body["spec"]["predictor"].get("canaryTrafficPercent"))
            return _json(200, current)
        return _status(405, "MethodNotAllowed", f"{method} is not allowed here")

    def reads_after_last_write(self) -> list[bool | None]:
        """``settled`` of each GET since the last create or replace."""
        writes = [i for i, (method, _) in enumerate(self.log) if method in ("POST", "PUT")]
        return [settled for method, settled in self.log[writes[-1] + 1 :] if method == "GET"]

    def methods(self) -> list[str]:
        """The methods of all requests so far, in order."""
        return [method for method, _ in self.log]

    def start_after(self, rounds: int) -> None:
        """Let every revision still starting become ready (or fail) after ``rounds`` rounds."""
        for service in self.services.values():
            for revision in service.revisions:
                if revision.ready is None:
                    revision.rounds_to_start = rounds

    def predictor_status(self, name: str, namespace: str) -> dict[str, Any]:
        """The stored ``status.components.predictor`` (no controller round)."""
        return dict(self.objects[(namespace, name)]["status"]["components"]["predictor"])

    def wsgi(self, environ: Any, start_response: Any) -> Any:
        """The WSGI application."""
        request = Request(environ)
        routes = ((resource, path.match(request.path)) for resource, path in _PATHS.items())
        resource, found = next(((r, m) for r, m in routes if m), ("", None))
        if not found:
            response = _status(404, "NotFound", f"no route {request.path}")
        else:
            body = json.loads(request.get_data() or b"null")
            with self._lock:
                response = self.handle(
                    request.method, found.group(1), found.group(2), body, resource
                )
        return response(environ, start_response)


def write_kubeconfig(url: str, path: Path) -> Path:
    """Write a kubeconfig at ``path`` whose current context is the fake API at ``url``."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "fake", "user": {"token": "fake"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        "current-context": "fake",
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def _logged(method: str, resource: str) -> str:
    """How ``FakeCluster.log`` names a request: ``GET``, or ``GET revisions`` for Revisions."""
    return method if resource == "inferenceservices" else f"{method} {resource}"


def _json(code: int, body: Any) -> Response:
    return Response(json.dumps(body), status=code, content_type="application/json")


def _status(code: int, reason: str, message: str) -> Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message}
    return _json(code, body | {"reason": reason, "code": code})


class _Quiet(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        """No access log: the tests read ``FakeCluster.log``."""


@contextmanager
def serve(cluster: FakeCluster) -> Iterator[str]:
    """Serve ``cluster`` on a free loopback port; yields its URL (use in a fixture)."""
    server = make_server("127.0.0.1", 0, cluster.wsgi, threaded=True, request_handler=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()
