"""Offline checks of the web form's frontend (manifests/base/model-namespace/frontend.yaml).

Every overlay is built with `kubectl kustomize`; the frontend's arguments are parsed by the
frontend's own parser (after the kubelet's ``$(VAR)`` expansion), so a manifest the program
would refuse fails here. Schema validation of every object is in test_cluster_manifests.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from mlops.settings import DEFAULT_IMAGE, DEFAULT_MODEL_NAME
from serving.form import build_frontend, parse_frontend_args
from tests.conftest import kubectl_binary

ROOT = Path(__file__).parents[2]
OVERLAYS = sorted(p.parent.name for p in ROOT.glob("manifests/overlays/*/kustomization.yaml"))


@pytest.fixture(scope="module", params=OVERLAYS)
def built(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl_binary(), "kustomize", str(ROOT / "manifests/overlays" / request.param)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name!r}, found {len(matches)}"
    return matches[0]


def _namespace(objects: list[dict[str, Any]]) -> str:
    (namespace,) = [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"]
    return str(namespace)


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = _find(objects, "Deployment", "web-form")["spec"]["template"]["spec"][
        "containers"
    ]
    return dict(container)


def _expanded_args(container: dict[str, Any], namespace: str) -> list[str]:
    """The arguments as the kubelet passes them: ``$(VAR)`` replaced from the env it declares."""
    values = {e["name"]: e.get("value") for e in container["env"]}
    field_refs = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in container["env"]
        if "fieldRef" in e.get("valueFrom", {})
    }
    assert field_refs.get("POD_NAMESPACE") == "metadata.namespace"
    values["POD_NAMESPACE"] = namespace
    args = [re.sub(r"\$\((\w+)\)", lambda m: str(values[m.group(1)]), a) for a in container["args"]]
    assert not [a for a in args if "$(" in a]
    return args


def test_the_frontend_runs_the_project_image_and_reaches_this_namespaces_isvc(
    built: list[dict[str, Any]],
) -> None:
    from pipelines import training

    namespace = _namespace(built)
    deployment = _find(built, "Deployment", "web-form")
    assert deployment["metadata"]["namespace"] == namespace
    container = _container(built)
    assert container["image"] == DEFAULT_IMAGE
    assert container["command"] == ["python", "-m", "serving.form"]
    settings = parse_frontend_args(_expanded_args(container, namespace))
    assert settings.upstream == f"http://{DEFAULT_MODEL_NAME}.{namespace}.svc.cluster.local"
    assert settings.model_name == DEFAULT_MODEL_NAME
    assert settings.store_uri == training.CLUSTER_STORE_URI
    assert settings.host == "0.0.0.0" and settings.auth_token is None
    assert settings.namespace == namespace  # the form is the version this namespace serves
    assert settings.max_body_bytes <= 8 * 1024 * 1024 and settings.timeout_s <= 60


def test_the_frontend_reads_the_store_as_the_read_only_user(built: list[dict[str, Any]]) -> None:
    container = _container(built)
    env = {e["name"]: e for e in container["env"]}
    assert env["MLOPS_S3_ENDPOINT"]["value"] == "http://minio:9000"
    minio = _find(built, "Service", "minio")
    assert 9000 in [p["port"] for p in minio["spec"]["ports"]]
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        ref = env[key]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "kserve-minio-s3", "key": key}
        assert key in _find(built, "Secret", "kserve-minio-s3")["data"]


def test_the_frontend_is_locked_down_and_bounded(built: list[dict[str, Any]]) -> None:
    pod = _find(built, "Deployment", "web-form")["spec"]["template"]["spec"]
    # A token since issue 19 (the served version is read from the InferenceService): its own
    # ServiceAccount, which test_the_frontends_token_reads_only_its_inference_service bounds.
    assert pod["serviceAccountName"] == "web-form" and pod["automountServiceAccountToken"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    container = _container(built)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    # The only writable path is a small emptyDir at /tmp.
    (mount,) = container["volumeMounts"]
    (volume,) = pod["volumes"]
    assert mount["mountPath"] == "/tmp" and volume["name"] == mount["name"]
    assert volume["emptyDir"]["sizeLimit"]


def test_the_probes_and_the_service_reach_the_port_the_frontend_listens_on(
    built: list[dict[str, Any]],
) -> None:
    namespace = _namespace(built)
    container = _container(built)
    settings = parse_frontend_args(_expanded_args(container, namespace))
    (port,) = container["ports"]
    assert port["containerPort"] == settings.port
    service = _find(built, "Service", "web-form")
    assert service["metadata"]["namespace"] == namespace
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"]]
    assert (
        service["spec"]["selector"]
        == (_find(built, "Deployment", "web-form")["spec"]["selector"]["matchLabels"])
    )
    # The app built from these very arguments answers the probes' request (the kubelet sends
    # Accept: */*) without its upstream or store: a pod does not restart when the model does.
    local = settings.__class__(**{**vars(settings), "host": "127.0.0.1", "upstream": "http://x"})
    with TestClient(build_frontend(local), base_url="http://127.0.0.1") as client:
        for probe in ("readinessProbe", "livenessProbe"):
            http_get = container[probe]["httpGet"]
            assert http_get["port"] == port["name"]
            answer = client.get(http_get["path"], headers={"accept": "*/*"})
            assert answer.status_code == 200 and answer.json() == {"status": "alive"}


def test_the_frontends_token_reads_only_its_inference_service(built: list[dict[str, Any]]) -> None:
    namespace = _namespace(built)
    role = _find(built, "Role", "web-form")
    assert role["metadata"]["namespace"] == namespace
    assert role["rules"] == [
        {
            "apiGroups": ["serving.kserve.io"],
            "resources": ["inferenceservices"],
            "resourceNames": [DEFAULT_MODEL_NAME],
            "verbs": ["get"],
        },
        {"apiGroups": ["serving.knative.dev"], "resources": ["revisions"], "verbs": ["get"]},
    ]
    binding = _find(built, "RoleBinding", "web-form")
    assert binding["roleRef"]["name"] == "web-form"
    subject = {"kind": "ServiceAccount", "name": "web-form", "namespace": namespace}
    assert binding["subjects"] == [subject]
    bound = [
        b
        for b in built
        if b["kind"] in ("RoleBinding", "ClusterRoleBinding")
        and {"kind": "ServiceAccount", "name": "web-form"}
        in [{k: s[k] for k in ("kind", "name")} for s in b.get("subjects", [])]
    ]
    assert [b["metadata"]["name"] for b in bound] == ["web-form"]


def test_the_frontend_checks_signatures_with_the_pipelines_key(built: list[dict[str, Any]]) -> None:
    import base64

    env = {e["name"]: e for e in _container(built)["env"]}
    ref = env["MLOPS_SIGNING_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "mlops-signing-key", "key": "MLOPS_SIGNING_KEY"}
    key = base64.b64decode(_find(built, "Secret", "mlops-signing-key")["data"]["MLOPS_SIGNING_KEY"])
    (pipeline,) = [
        o for o in built if o["kind"] == "Secret" and o["metadata"]["name"].startswith("mlops-s3")
    ]
    assert key == base64.b64decode(pipeline["data"]["MLOPS_SIGNING_KEY"])
