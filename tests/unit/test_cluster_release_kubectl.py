"""The release workflow's kubectl calls, run for real against a fake API with the overlays' RBAC.

The preflight step of .github/workflows/release.yaml runs as written (bash, the pinned kubectl,
its ``KUBECONFIG_B64``), and each ``forward`` of the release step runs
``kubectl port-forward svc/...`` as the step does, all as ServiceAccount
``mlops-prod/mlops-release``. The fake API serves what kubectl asks of it (discovery, the
rendered Services, pods made from the rendered Deployments), answers ``kubectl auth can-i``'s
SelfSubjectAccessReview with the RBAC evaluator (``tests/unit/rbac.py``), refuses with 403 what
the Roles do not allow, and records every request, which must be listed in
``cluster_api_requests.release_requests``. It cannot stream, so a port-forward ends at the
connection upgrade ("error upgrading connection"), after every request RBAC decides on.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import yaml
from werkzeug.serving import make_server
from werkzeug.wrappers import Request as HttpRequest
from werkzeug.wrappers import Response

from tests.conftest import kubectl_binary, render_overlay
from tests.unit import cluster_api_requests as calls
from tests.unit.rbac import Request, allowed, request_of, user_of_service_account

ROOT = Path(__file__).parents[2]
WORKFLOW = ROOT / ".github/workflows/release.yaml"
# Discovery (GET /api, /apis, /api/v1, ...) is a non-resource request every user may make
# (ClusterRole system:discovery, kubernetes plugin/pkg/auth/authorizer/rbac/bootstrappolicy).
RESOURCES = {
    "/api/v1": [
        ("services", "Service", ["svc"], ["get", "list"]),
        ("pods", "Pod", ["po"], ["get", "list"]),
        ("pods/portforward", "PodPortForwardOptions", [], ["create", "get"]),
        ("services/proxy", "ServiceProxyOptions", [], ["get"]),
        ("events", "Event", ["ev"], ["create"]),
    ],
    "/apis/serving.knative.dev/v1": [("revisions", "Revision", ["rev"], ["get"])],
    "/apis/coordination.k8s.io/v1": [("leases", "Lease", [], ["get", "create", "update"])],
    "/apis/authorization.k8s.io/v1": [
        ("selfsubjectaccessreviews", "SelfSubjectAccessReview", [], ["create"])
    ],
    "/apis/serving.kserve.io/v1beta1": [
        ("inferenceservices", "InferenceService", ["isvc"], ["get", "create", "update"])
    ],
}


class CoreApi:
    """Services and pods of the rendered overlays, behind the RBAC of ``identity``."""

    def __init__(self, objects: list[dict[str, Any]], identity: tuple[str, str]) -> None:
        self.objects = objects
        self.user, self.groups = user_of_service_account(*identity)
        self.requests: list[Request] = []
        self.refused: list[Request] = []
        self.questions: list[Request] = []  # what each SelfSubjectAccessReview asked

    def _pods(self, namespace: str) -> list[dict[str, Any]]:
        pods = []
        for obj in self.objects:
            if obj["kind"] == "Deployment" and obj["metadata"]["namespace"] == namespace:
                template = obj["spec"]["template"]
                pods.append(
                    {
                        "kind": "Pod",
                        "apiVersion": "v1",
                        "metadata": {
                            "name": f"{obj['metadata']['name']}-7d9c6b5f4-x2k8p",
                            "namespace": namespace,
                            "labels": template["metadata"]["labels"],
                        },
                        "spec": template["spec"],
                        "status": {"phase": "Running"},
                    }
                )
        return pods

    def app(self, environ: Any, start_response: Any) -> Any:
        http = HttpRequest(environ)
        return self._answer(http, environ.get("QUERY_STRING", ""))(environ, start_response)

    def _answer(self, http: HttpRequest, query: str) -> Response:  # noqa: PLR0911
        if http.path == "/api":
            return _json({"kind": "APIVersions", "versions": ["v1"]})
        if http.path == "/apis":
            groups = [p.split("/")[2:4] for p in RESOURCES if p.startswith("/apis/")]
            return _json(
                {
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [
                        {
                            "name": g,
                            "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                            "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v},
                        }
                        for g, v in groups
                    ],
                }
            )
        if http.path in RESOURCES:
            return _json(_resource_list(http.path))
        asked = request_of(http.method, http.path, query)
        self.requests.append(asked)
        if asked.resource == "selfsubjectaccessreviews":
            # kubectl sends built-in kinds as protobuf; the answer may be JSON (its Accept).
            if http.content_type == "application/json":
                review = json.loads(http.get_data())
                attributes = review["spec"]["resourceAttributes"]
            else:
                attributes = review_attributes(http.get_data())
                review = {"spec": {"resourceAttributes": attributes}}
            review |= {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1"}
            question = Request(
                attributes.get("verb", ""),
                attributes.get("group", ""),
                attributes.get("resource", ""),
                attributes.get("namespace") or None,
                attributes.get("name") or None,
                attributes.get("subresource", ""),
            )
            self.questions.append(question)
            review["status"] = {"allowed": allowed(self.objects, self.user, self.groups, question)}
            return _json(review, 201)
        if not allowed(self.objects, self.user, self.groups, asked):
            self.refused.append(asked)
            return _status(403, f'{asked.resource} is forbidden: User "{self.user}" cannot '
                           f"{asked.verb} resource {asked.resource!r} in the namespace "
                           f"{asked.namespace!r}")  # fmt: skip
        namespace = str(asked.namespace)
        if asked.subresource == "portforward":
            return _status(400, "this fake API does not stream")
        if asked.resource == "services":
            found = [
                o
                for o in self.objects
                if o["kind"] == "Service"
                and (o["metadata"]["namespace"], o["metadata"]["name"]) == (namespace, asked.name)
            ]
            return _json(found[0]) if found else _status(404, f'services "{asked.name}" not found')
        if asked.resource == "pods" and asked.name is None:
            wanted = dict(
                pair.split("=", 1)
                for pair in parse_qs(query).get("labelSelector", [""])[0].split(",")
                if pair
            )
            items = [
                p
                for p in self._pods(namespace)
                if all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())
            ]
            return _json({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
        if asked.resource == "pods":
            found = [p for p in self._pods(namespace) if p["metadata"]["name"] == asked.name]
            return _json(found[0]) if found else _status(404, f'pods "{asked.name}" not found')
        return _status(404, f"the fake API has no {asked.resource}")


def _fields(message: bytes) -> dict[int, list[bytes]]:
    """The length-delimited fields of a protobuf message, by field number (wire type 2 only)."""
    fields: dict[int, list[bytes]] = {}
    at = 0

    def varint() -> int:
        nonlocal at
        value, shift = 0, 0
        while True:
            byte = message[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while at < len(message):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            varint()
        elif wire == 2:
            size = varint()
            fields.setdefault(number, []).append(message[at : at + size])
            at += size
        else:
            raise ValueError(f"wire type {wire} in a SelfSubjectAccessReview")
    return fields


def review_attributes(body: bytes) -> dict[str, str]:
    """``spec.resourceAttributes`` of a protobuf SelfSubjectAccessReview, as kubectl sends it.

    The envelope: ``k8s\\x00`` then a runtime.Unknown (raw = field 2), k8s.io/apimachinery
    pkg/runtime/serializer/protobuf/protobuf.go; the review: spec = 2, its resourceAttributes =
    1, whose namespace, verb, group, version, resource, subresource, name are fields 1 to 7
    (k8s.io/api authorization/v1/generated.proto).
    """
    assert body[:4] == b"k8s\x00", "not a Kubernetes protobuf envelope"
    (raw,) = _fields(body[4:])[2]
    (spec,) = _fields(raw)[2]
    (attributes,) = _fields(spec)[1]
    names = ("namespace", "verb", "group", "version", "resource", "subresource", "name")
    found = _fields(attributes)
    return {n: found[i][0].decode() for i, n in enumerate(names, 1) if i in found}


def _resource_list(path: str) -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "groupVersion": path.removeprefix("/apis/").removeprefix("/api/"),
        "resources": [
            {
                "name": name,
                "singularName": "" if "/" in name else kind.lower(),
                "namespaced": name != "selfsubjectaccessreviews",
                "kind": kind,
                "verbs": verbs,
                "shortNames": short,
            }
            for name, kind, short, verbs in RESOURCES[path]
        ],
    }


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")


def _status(code: int, message: str) -> Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}
    return _json(body | {"message": message}, code)


@pytest.fixture
def release_api(tmp_path: Path) -> Iterator[tuple[CoreApi, dict[str, str]]]:
    """The fake API as the release's ServiceAccount sees it, and the env kubectl runs with."""
    api = CoreApi(render_overlay("dev") + render_overlay("prod"), calls.RELEASE)
    server = make_server("127.0.0.1", 0, api.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "prod", "cluster": {"server": url}}],
        "users": [{"name": "mlops-release", "user": {"token": "release-token"}}],
        "contexts": [{"name": "prod", "context": {"cluster": "prod", "user": "mlops-release"}}],
        "current-context": "prod",
    }
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "PATH": "/usr/bin:/bin",
        "KUBECONFIG_B64": base64.b64encode(json.dumps(kubeconfig).encode()).decode(),
    }
    yield api, env
    server.shutdown()
    thread.join()


def _steps() -> list[dict[str, Any]]:
    return list(yaml.safe_load(WORKFLOW.read_text())["jobs"]["release"]["steps"])


def _kubectl_tree(tmp_path: Path) -> Path:
    """A checkout whose .venv/bin/kubectl is the pinned kubectl, as `make setup` leaves it."""
    tree = tmp_path / "checkout"
    (tree / ".venv/bin").mkdir(parents=True)
    (tree / ".venv/bin/kubectl").symlink_to(kubectl_binary())
    return tree


def test_the_preflight_step_passes_with_the_release_service_accounts_roles(
    release_api: tuple[CoreApi, dict[str, str]], tmp_path: Path
) -> None:
    api, env = release_api
    (step,) = [s for s in _steps() if "KUBECONFIG_B64" in s.get("run", "")]
    result = subprocess.run(
        ["bash", "-e", "-c", step["run"]],
        cwd=_kubectl_tree(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "service/minio" in result.stdout and "service/mlflow" in result.stdout
    assert api.refused == []
    assert [r for r in api.requests if not calls.listed(r, calls.release_requests())] == []
    asked = {(r.verb, r.resource, r.namespace) for r in api.requests}
    assert ("create", "selfsubjectaccessreviews", None) in asked  # the can-i questions
    assert ("get", "services", calls.DEV) in asked and ("get", "services", calls.PROD) in asked


def test_the_preflight_fails_naming_what_the_kubeconfig_may_not_do(
    release_api: tuple[CoreApi, dict[str, str]], tmp_path: Path
) -> None:
    api, env = release_api
    api.objects = [o for o in api.objects if o["metadata"]["name"] != "model-releaser"]
    (step,) = [s for s in _steps() if "KUBECONFIG_B64" in s.get("run", "")]
    result = subprocess.run(
        ["bash", "-e", "-c", step["run"]],
        cwd=_kubectl_tree(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "::error::the kubeconfig may not get InferenceServices in mlops-prod" in result.stdout


def test_every_port_forward_of_the_release_step_is_allowed(
    release_api: tuple[CoreApi, dict[str, str]], tmp_path: Path
) -> None:
    api, env = release_api
    (step,) = [s for s in _steps() if "mlops release" in s.get("run", "")]
    forwards = re.findall(r"^\s*forward (\S+) (\S+) (\d+) (\d+)$", step["run"], re.MULTILINE)
    assert len(forwards) == 4
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_bytes(base64.b64decode(env["KUBECONFIG_B64"]))
    for namespace, service, _, remote in forwards:
        # As the step's forward() runs it, with a free local port instead of the fixed one.
        result = subprocess.run(
            [kubectl_binary(), "--kubeconfig", str(kubeconfig), "--cache-dir",
             str(tmp_path / "cache"), "port-forward", "-n", namespace, f"svc/{service}",
             f"0:{remote}"],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        assert "error upgrading connection" in result.stderr, result.stderr
        assert "forbidden" not in result.stderr.lower()
    assert api.refused == []
    assert [r for r in api.requests if not calls.listed(r, calls.release_requests())] == []
    forwarded = {(r.namespace, r.verb) for r in api.requests if r.subresource == "portforward"}
    # kubectl 1.37 opens a WebSocket (GET) first, then falls back to SPDY (POST: create).
    assert forwarded == {(ns, v) for ns in (calls.DEV, calls.PROD) for v in ("get", "create")}


def test_the_e2es_can_i_arguments_ask_exactly_the_listed_requests(
    release_api: tuple[CoreApi, dict[str, str]], tmp_path: Path
) -> None:
    # tests/e2e/test_cluster_rbac.py asks the cluster with Request.can_i(); kubectl turns those
    # arguments into a SelfSubjectAccessReview, which must be the request itself.
    api, env = release_api
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_bytes(base64.b64decode(env["KUBECONFIG_B64"]))
    table = calls.pipeline_requests(calls.DEV) + calls.release_requests()
    for request in table:
        subprocess.run(
            [kubectl_binary(), "--kubeconfig", str(kubeconfig), "--cache-dir",
             str(tmp_path / "cache"), "auth", "can-i", *request.can_i()],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    assert api.questions == table
