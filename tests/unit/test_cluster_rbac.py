"""The rollout step's and the release workflow's RBAC, offline, as ``kubectl auth can-i`` answers.

The rendered overlays' Roles and RoleBindings are evaluated by ``tests/unit/rbac.py`` (the
Kubernetes RBAC authorizer's rules). The requests are the code's own: the deploy, the rollout
target and the release's deploy run against the fake Kubernetes API (``kserve_status_fake``)
behind an authorizer that turns each HTTP request into its RBAC attributes, refuses it with 403
unless the identity's Roles allow it, and records it; every recorded request must be listed in
``cluster_api_requests`` (the e2e asks the real API server the same list with
``kubectl auth can-i --as``). What this cannot show: that the cluster's identities are these
(KFP's runner, the kubeconfig's ServiceAccount) and that no admission or aggregated layer adds
its own refusals; the e2e does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request as HttpRequest
from werkzeug.wrappers import Response

from serving import kubernetes_target
from serving.deploy import deploy_inference_service, deployed_versions
from serving.inference_service import PredictorSettings
from serving.kubernetes_signals import KubernetesTarget
from tests.conftest import render_overlay
from tests.unit import cluster_api_requests as calls
from tests.unit.kserve_status_fake import FakeCluster, write_kubeconfig
from tests.unit.rbac import Request, allowed, request_of, user_of_service_account

METRICS = "# HELP mlops_requests_total x\n# TYPE mlops_requests_total counter\n"


class AuthorizingApi:
    """The fake cluster behind an RBAC check: 403 unless ``identity``'s Roles allow a request."""

    def __init__(self, objects: list[dict[str, Any]], identity: tuple[str, str]) -> None:
        self.objects, self.cluster = objects, FakeCluster()
        self.user, self.groups = user_of_service_account(*identity)
        self.requests: list[Request] = []
        self.refused: list[Request] = []
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}

    def _answer(self, asked: Request, http: HttpRequest) -> Any:
        if (asked.resource, asked.subresource) == ("services", "proxy"):
            return Response(METRICS, content_type="text/plain")
        if asked.resource == "events" and asked.verb == "create":
            return Response(http.get_data(), status=201, content_type="application/json")
        if asked.resource == "leases":  # the rollout's Lease: stored as sent
            key = (
                str(asked.namespace),
                asked.name or json.loads(http.get_data())["metadata"]["name"],
            )
            if asked.verb in ("create", "update"):
                self.leases[key] = json.loads(http.get_data())
                return Response(http.get_data(), status=201 if asked.verb == "create" else 200)
            if key in self.leases and asked.verb == "delete":
                del self.leases[key]
                return Response(json.dumps({"kind": "Status", "status": "Success"}), status=200)
            if key in self.leases:
                return Response(json.dumps(self.leases[key]), content_type="application/json")
            return _status(404, "NotFound", f'leases.coordination.k8s.io "{key[1]}" not found')
        return self.cluster.wsgi

    def unlisted(self, table: list[Request]) -> list[Request]:
        return [r for r in self.requests if not calls.listed(r, table)]


def _status(code: int, reason: str, message: str) -> Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}
    body |= {"reason": reason, "message": message}
    return Response(json.dumps(body), status=code, content_type="application/json")


@pytest.fixture
def serve_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    servers = []
    monkeypatch.setattr(kubernetes_target, "POLL_INTERVAL_S", 0.01)

    def start(api: AuthorizingApi) -> AuthorizingApi:
        server = make_server("127.0.0.1", 0, _wsgi(api), threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        url = f"http://127.0.0.1:{server.server_port}"
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(url, tmp_path / "kubeconfig")))
        return api

    yield start
    for server, thread in servers:
        server.shutdown()
        thread.join()


def _wsgi(api: AuthorizingApi) -> Any:
    """The API: each request authorized and recorded, then answered (by the fake cluster)."""

    def app(environ: Any, start_response: Any) -> Any:
        http = HttpRequest(environ)
        asked = request_of(http.method, http.path, environ.get("QUERY_STRING", ""))
        api.requests.append(asked)
        if not allowed(api.objects, api.user, api.groups, asked):
            api.refused.append(asked)
            # The API server's wording (k8s.io/apiserver pkg/endpoints/handlers/responsewriters).
            message = (
                f'{asked.resource} "{asked.name or ""}" is forbidden: User "{api.user}" cannot '
                f"{asked.verb} resource {asked.resource!r} in API group {asked.group!r} in the "
                f"namespace {asked.namespace!r}"
            )
            return _status(403, "Forbidden", message)(environ, start_response)
        answer = api._answer(asked, http)
        if answer is api.cluster.wsgi:
            return api.cluster.wsgi(environ, start_response)
        return answer(environ, start_response)

    return app


def _settings(namespace: str, version: int) -> PredictorSettings:
    return PredictorSettings(
        name=calls.MODEL,
        namespace=namespace,
        storage_uri=f"s3://models/{calls.MODEL}/{version}/",
        model_version=version,
        canary_traffic_percent=10,
        service_account="kserve-minio-sa",
    )


def _deploy_step(namespace: str, version: int, tmp_path: Path) -> None:
    """The deploy step's cluster part (components/deploy_model.py -> serving.deploy)."""
    applied = deploy_inference_service(_settings(namespace, version), "kubernetes", tmp_path, 30)
    from serving.deploy import revision_versions

    revision_versions(applied, "kubernetes", tmp_path)  # sync_aliases' read, before MLflow


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_the_deploy_and_rollout_steps_are_allowed_every_request_they_make(
    overlay: str, serve_api: Any, tmp_path: Path
) -> None:
    objects = render_overlay(overlay)
    (namespace,) = [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"]
    api = serve_api(AuthorizingApi(objects, calls.PIPELINE_RUNNER))
    _deploy_step(namespace, 1, tmp_path)
    _deploy_step(namespace, 2, tmp_path)  # a canary at 10%
    # The rollout reaches the cluster only through its target's methods (serving/rollout.py).
    target = KubernetesTarget(calls.MODEL, namespace, tmp_path, tracking_uri=None, settle_s=0)
    with target.lock():  # the Lease: taken, and released at the end
        pair = target.pair()
        assert pair.canary_version == "2"
        target.read_metrics()
        target.set_share(50)
        target.record({"outcome": "rolled-back", "reason": "test"})
        target.rollback()
        target.promote()

    assert api.refused == []
    assert api.unlisted(calls.pipeline_requests(namespace)) == []
    verbs = {(r.verb, r.resource, r.subresource) for r in api.requests}
    assert {("create", "inferenceservices", ""), ("update", "inferenceservices", "")} <= verbs
    assert {("get", "services", "proxy"), ("create", "events", "")} <= verbs
    assert {("create", "leases", ""), ("delete", "leases", "")} <= verbs
    assert api.leases == {}


def test_the_releases_deploy_to_prod_is_allowed_every_request_it_makes(
    serve_api: Any, tmp_path: Path
) -> None:
    api = serve_api(AuthorizingApi(render_overlay("prod"), calls.RELEASE))
    for version in (1, 2):  # mlops/release.py: deployed_versions, then the deploy, then aliases
        assert (deployed_versions(calls.MODEL, "kubernetes", state_dir=tmp_path,
                                  namespace=calls.PROD) is None) == (version == 1)  # fmt: skip
        _deploy_step(calls.PROD, version, tmp_path)
    assert api.refused == []
    assert api.unlisted(calls.release_requests()) == []


def test_the_release_may_not_deploy_to_dev(serve_api: Any, tmp_path: Path) -> None:
    objects = render_overlay("dev") + render_overlay("prod")
    api = serve_api(AuthorizingApi(objects, calls.RELEASE))
    with pytest.raises(RuntimeError, match="forbidden"):
        deploy_inference_service(_settings(calls.DEV, 1), "kubernetes", tmp_path, 30)
    assert api.refused == [
        Request("get", calls.KSERVE, "inferenceservices", calls.DEV, calls.MODEL)
    ]


def test_a_rollout_without_its_role_is_refused_with_the_servers_message(
    serve_api: Any, tmp_path: Path
) -> None:
    objects = [o for o in render_overlay("dev") if o["metadata"]["name"] != "canary-rollout"]
    api = serve_api(AuthorizingApi(objects, calls.PIPELINE_RUNNER))
    _deploy_step(calls.DEV, 1, tmp_path)
    target = KubernetesTarget(calls.MODEL, calls.DEV, tmp_path, tracking_uri=None, settle_s=0)
    with pytest.raises(RuntimeError, match="mlops-payload-sink.*forbidden"):
        target.read_metrics()
    assert api.refused[-1].subresource == "proxy"


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_listed_request_of_the_rollout_is_allowed_to_pipeline_runner(overlay: str) -> None:
    objects = render_overlay(overlay)
    (namespace,) = [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"]
    user, groups = user_of_service_account(*calls.PIPELINE_RUNNER)
    refused = [
        r for r in calls.pipeline_requests(namespace) if not allowed(objects, user, groups, r)
    ]
    assert refused == []


def test_every_listed_request_of_the_release_is_allowed_to_its_service_account() -> None:
    objects = render_overlay("dev") + render_overlay("prod")
    user, groups = user_of_service_account(*calls.RELEASE)
    refused = [r for r in calls.release_requests() if not allowed(objects, user, groups, r)]
    assert refused == []


@pytest.mark.parametrize(
    ("identity", "request_"),
    [
        (
            calls.PIPELINE_RUNNER,
            Request("delete", calls.KSERVE, "inferenceservices", calls.DEV, calls.MODEL),
        ),
        (calls.PIPELINE_RUNNER, Request("get", "", "secrets", calls.DEV, "kserve-minio-s3")),
        (calls.PIPELINE_RUNNER, Request("get", "", "services", calls.DEV, "mlflow:http", "proxy")),
        (calls.PIPELINE_RUNNER, Request("update", calls.KNATIVE, "revisions", calls.DEV, "x")),
        (calls.PIPELINE_RUNNER, Request("list", calls.LEASES, "leases", calls.DEV)),
        (calls.PIPELINE_RUNNER, Request("get", calls.KSERVE, "inferenceservices", "default", "x")),
        (calls.RELEASE, Request("create", calls.KSERVE, "inferenceservices", calls.DEV)),
        (
            calls.RELEASE,
            Request("delete", calls.KSERVE, "inferenceservices", calls.PROD, calls.MODEL),
        ),
        (calls.RELEASE, Request("get", "", "secrets", calls.PROD, "mlops-store-rw")),
        (calls.RELEASE, Request("get", "", "services", calls.PROD, "mlops-payload-sink")),
        (calls.RELEASE, Request("create", "", "pods", calls.PROD, subresource="exec")),
        (calls.RELEASE, Request("get", "", "namespaces", None, calls.PROD)),
    ],
    ids=lambda v: " ".join(v.can_i()) if isinstance(v, Request) else "/".join(v),
)
def test_what_neither_identity_may_do(identity: tuple[str, str], request_: Request) -> None:
    objects = render_overlay("dev") + render_overlay("prod")
    user, groups = user_of_service_account(*identity)
    assert not allowed(objects, user, groups, request_)


def test_the_evaluator_follows_the_rbac_authorizers_matching_rules() -> None:
    role = {
        "kind": "Role",
        "metadata": {"name": "r", "namespace": "ns"},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["services/proxy"],
                "resourceNames": ["a:http"],
                "verbs": ["get"],
            },
            {"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["*"]},
            {"apiGroups": ["g"], "resources": ["things"], "verbs": ["list"]},
        ],
    }
    binding = {
        "kind": "RoleBinding",
        "metadata": {"name": "b", "namespace": "ns"},
        "roleRef": {"kind": "Role", "name": "r"},
        "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "other"}],
    }
    user, groups = user_of_service_account("other", "sa")

    def can(request: Request, who: str = user) -> bool:
        return allowed([role, binding], who, groups, request)

    assert can(Request("get", "", "services", "ns", "a:http", "proxy"))
    assert not can(Request("get", "", "services", "ns", "b:http", "proxy"))  # resourceNames
    assert not can(Request("get", "", "services", "ns", "a:http"))  # the parent, not the sub
    assert can(Request("update", "x", "pods", "ns", "p", "status"))  # */status, any group
    assert can(Request("list", "g", "things", "ns"))
    assert not can(Request("list", "g", "things", "elsewhere"))  # a Role binds in its namespace
    assert not can(Request("list", "g", "things", "ns"), "system:serviceaccount:ns:sa")
    # Anyone authenticated may ask can-i (system:basic-user).
    assert can(Request("create", "authorization.k8s.io", "selfsubjectaccessreviews", None))


def test_http_requests_become_their_rbac_attributes_as_the_api_server_reads_them() -> None:
    assert request_of(
        "GET", "/apis/serving.kserve.io/v1beta1/namespaces/ns/inferenceservices/m"
    ) == (Request("get", "serving.kserve.io", "inferenceservices", "ns", "m"))
    assert request_of(
        "POST", "/apis/serving.kserve.io/v1beta1/namespaces/ns/inferenceservices"
    ) == (Request("create", "serving.kserve.io", "inferenceservices", "ns"))
    assert request_of("GET", "/api/v1/namespaces/ns/services/s:http/proxy/metrics") == (
        Request("get", "", "services", "ns", "s:http", "proxy")
    )
    assert request_of("GET", "/api/v1/namespaces/ns/pods", "labelSelector=a%3Db") == (
        Request("list", "", "pods", "ns")
    )
    assert request_of("GET", "/api/v1/namespaces/ns/pods", "watch=true").verb == "watch"
    namespace = Request("get", "", "namespaces", "ns", "ns")
    assert request_of("GET", "/api/v1/namespaces/ns") == namespace
    assert request_of("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews") == (
        Request("create", "authorization.k8s.io", "selfsubjectaccessreviews", None)
    )
