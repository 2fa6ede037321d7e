"""Offline checks of manifests/: every overlay builds, validates, and agrees with the code."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import kubectl_binary

ROOT = Path(__file__).parents[2]
OVERLAYS = sorted(p.parent.name for p in ROOT.glob("manifests/overlays/*/kustomization.yaml"))
# Kinds the Kubernetes schemas do not know. None is in manifests/ today; the InferenceService is
# built in code and checked against the kserve SDK's classes (test_cluster_inference_service).
CRD_KINDS = {"InferenceService": "a KServe CRD: checked by the kserve SDK round trip instead"}


def _kubernetes_version() -> str:
    image = yaml.safe_load((ROOT / "kind-config.yaml").read_text())["nodes"][0]["image"]
    return image.split(":v", 1)[1].split("@", 1)[0]


@pytest.fixture(scope="module", params=OVERLAYS)
def built(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    result = subprocess.run(
        [kubectl_binary(), "kustomize", str(ROOT / "manifests/overlays" / request.param)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"overlay {request.param} does not build:\n{result.stderr}"
    return request.param, [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name!r}, found {len(matches)}"
    return matches[0]


def _model_namespace(objects: list[dict[str, Any]]) -> str:
    (namespace,) = [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"]
    return str(namespace)


def _secret_value(secret: dict[str, Any], key: str) -> str:
    if key in secret.get("stringData", {}):
        return str(secret["stringData"][key])
    return base64.b64decode(secret["data"][key]).decode()


def test_there_are_dev_and_prod_overlays() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)


def test_every_object_is_valid_against_the_kind_nodes_kubernetes_schemas(built: Any) -> None:
    overlay, objects = built
    version = _kubernetes_version()
    checked = 0
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{overlay}: {obj['kind']} {obj['metadata']['name']}: {err.message}")
        checked += 1
    assert checked == len([o for o in objects if o["kind"] not in CRD_KINDS]) > 10


def test_the_storage_secret_points_kserve_at_this_namespaces_minio(built: Any) -> None:
    _, objects = built
    namespace = _model_namespace(objects)
    secret = _find(objects, "Secret", "kserve-minio-s3")
    annotations = secret["metadata"]["annotations"]
    assert secret["metadata"]["namespace"] == namespace
    assert (
        annotations["serving.kserve.io/s3-endpoint"] == f"minio.{namespace}.svc.cluster.local:9000"
    )
    assert annotations["serving.kserve.io/s3-usehttps"] == "0"
    assert annotations["serving.kserve.io/s3-region"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret["data"])
    service = _find(objects, "Service", "minio")
    assert service["metadata"]["namespace"] == namespace
    assert 9000 in [p["port"] for p in service["spec"]["ports"]]
    account = _find(objects, "ServiceAccount", "kserve-minio-sa")
    assert account["metadata"]["namespace"] == namespace
    assert {"name": "kserve-minio-s3"} in account["secrets"]


def test_the_pipeline_steps_get_the_read_write_user_and_a_signing_key_in_kfps_namespace(
    built: Any,
) -> None:
    from pipelines import training

    _, objects = built
    namespace = _model_namespace(objects)
    read_write = _find(objects, "Secret", "mlops-store-rw")
    (steps,) = [
        o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"].startswith("mlops-s3")
    ]
    assert steps["metadata"]["namespace"] == "kubeflow"
    # Every key the pipeline maps from the Secret into the steps' env must be there.
    assert {*training.S3_SECRET_KEYS, "MLOPS_SIGNING_KEY"} <= set(steps["data"])
    endpoint = _secret_value(steps, "MLOPS_S3_ENDPOINT")
    assert endpoint == f"http://minio.{namespace}.svc.cluster.local:9000"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert _secret_value(steps, key) == _secret_value(read_write, key)
    assert _secret_value(steps, "MLOPS_SIGNING_KEY").startswith("kind-only-")


def test_serving_reads_the_store_with_its_own_read_only_user(built: Any) -> None:
    _, objects = built
    serving = _find(objects, "Secret", "kserve-minio-s3")
    read_write = _find(objects, "Secret", "mlops-store-rw")
    assert _secret_value(serving, "AWS_ACCESS_KEY_ID") != _secret_value(
        read_write, "AWS_ACCESS_KEY_ID"
    )
    job = _find(objects, "Job", "create-buckets")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    script = "\n".join(container["args"])
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
        for e in container["env"]
        if "valueFrom" in e
    }
    assert refs["RW_ACCESS_KEY_ID"] == "mlops-store-rw"
    assert refs["RO_ACCESS_KEY_ID"] == "kserve-minio-s3"
    assert 'attach store readwrite --user "$RW_ACCESS_KEY_ID"' in script
    assert 'attach store models-read-only --user "$RO_ACCESS_KEY_ID"' in script
    # The policy the Job creates is the ConfigMap's document, mounted where the script reads it.
    (volume,) = pod["volumes"]
    (mount,) = container["volumeMounts"]
    policy = _find(objects, "ConfigMap", volume["configMap"]["name"])
    (file_name,) = policy["data"]
    assert f"mc admin policy create store models-read-only {mount['mountPath']}/{file_name}" in (
        script
    )
    # Nothing but the pipeline's user (MLflow, the Job) uses the read-write Secret.
    mlflow = _find(objects, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in mlflow["env"] if "valueFrom" in e} == {
        "mlops-store-rw"
    }


def test_mlflow_runs_one_worker_without_job_execution_behind_a_startup_probe(built: Any) -> None:
    _, objects = built
    mlflow = _find(objects, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert "--workers=1" in mlflow["args"]
    env = {e["name"]: e.get("value") for e in mlflow["env"]}
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert mlflow["startupProbe"]["httpGet"]["path"] == "/health"
    assert "initialDelaySeconds" not in mlflow["livenessProbe"]  # the startupProbe holds it off


def test_pipeline_runner_may_manage_inference_services_in_the_model_namespace_only(
    built: Any,
) -> None:
    _, objects = built
    namespace = _model_namespace(objects)
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = _find(objects, "Role", "inferenceservice-deployer")
    assert role["metadata"]["namespace"] == namespace
    allowed = {
        "serving.kserve.io": {"inferenceservices", "inferenceservices/status"},
        "serving.knative.dev": {"revisions"},  # read only: the model version of each revision
    }
    for rule in role["rules"]:
        (group,) = rule["apiGroups"]
        assert set(rule["resources"]) <= allowed[group]
        assert "*" not in rule["verbs"] and "delete" not in rule["verbs"]
        if group == "serving.knative.dev":
            assert set(rule["verbs"]) <= {"get", "list", "watch"}
    verbs = {v for r in role["rules"] if "inferenceservices" in r["resources"] for v in r["verbs"]}
    assert {"get", "create", "update"} <= verbs  # KServeClient get, create, replace
    binding = _find(objects, "RoleBinding", "pipeline-runner-deploys-models")
    assert binding["metadata"]["namespace"] == namespace
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "inferenceservice-deployer",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}
    ]


def test_every_image_is_pinned_and_minio_comes_from_quay(built: Any) -> None:
    _, objects = built
    images = [
        container["image"]
        for obj in objects
        if obj["kind"] in ("Deployment", "Job")
        for container in obj["spec"]["template"]["spec"]["containers"]
    ]
    assert images
    for image in images:
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", f"{image} is not pinned to a tag"
    minio = [i for i in images if "/minio/" in i]
    assert minio and all(i.startswith("quay.io/minio/") for i in minio)


def test_workloads_run_as_non_root_with_small_requests(built: Any) -> None:
    _, objects = built
    for obj in objects:
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, obj["metadata"]["name"]
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert "cpu" in container["resources"]["requests"]


def test_the_dev_overlay_is_where_the_pipeline_and_cli_deploy_by_default() -> None:
    from mlops.cli.pipeline import submit
    from pipelines import training

    result = subprocess.run(
        [kubectl_binary(), "kustomize", str(ROOT / "manifests/overlays/dev")],
        capture_output=True,
        text=True,
        check=True,
    )
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    namespace = _model_namespace(objects)
    defaults = {p.name: p.default for p in submit.params}
    assert defaults["namespace"] == namespace
    assert defaults["service_account"] == "kserve-minio-sa"
    assert training.CLUSTER_TRACKING_URI == f"http://mlflow.{namespace}.svc.cluster.local:5000"
    _find(objects, "Secret", training.CLUSTER_S3_SECRET)
    mlflow = _find(objects, "Service", "mlflow")
    assert 5000 in [p["port"] for p in mlflow["spec"]["ports"]]
    bucket = defaults["store_uri"].removeprefix("s3://").split("/")[0]
    assert bucket == training.CLUSTER_STORE_URI.removeprefix("s3://").split("/")[0]
    job = _find(objects, "Job", "create-buckets")
    script = "\n".join(job["spec"]["template"]["spec"]["containers"][0]["args"])
    assert f"store/{bucket}" in script and "store/mlflow" in script


def test_the_payload_sink_is_where_the_logger_posts_and_the_rollout_reads(built: Any) -> None:
    from mlops.settings import DEFAULT_IMAGE
    from serving.inference_service import PAYLOAD_SINK_SERVICE, payload_sink_url
    from serving.kubernetes_signals import SINK_PORT_NAME

    _, objects = built
    namespace = _model_namespace(objects)
    service = _find(objects, "Service", PAYLOAD_SINK_SERVICE)
    assert service["metadata"]["namespace"] == namespace
    # The logger's URL (port 80 implied) and the proxy path's port name both reach the sink.
    assert payload_sink_url(namespace).startswith(f"http://{PAYLOAD_SINK_SERVICE}.{namespace}.")
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"]) == (SINK_PORT_NAME, 80)
    deployment = _find(objects, "Deployment", PAYLOAD_SINK_SERVICE)
    assert deployment["spec"]["replicas"] == 1  # request/response pairing is in memory
    # Never two at once, not even during an update (a rolling update starts the new pod first).
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == DEFAULT_IMAGE
    assert container["command"] == ["python", "-m", "serving.payload_sink"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {SINK_PORT_NAME: 8000}
    assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_the_rollout_may_read_only_the_sinks_metrics_and_create_events(built: Any) -> None:
    _, objects = built
    role = _find(objects, "Role", "canary-rollout")
    assert role["metadata"]["namespace"] == _model_namespace(objects)
    rules = {(r["resources"][0], tuple(r["verbs"])): r.get("resourceNames") for r in role["rules"]}
    assert rules == {
        ("services/proxy", ("get",)): ["mlops-payload-sink", "mlops-payload-sink:http"],
        ("events", ("create",)): None,
        # The rollout's Lease per InferenceService (one rollout at a time), released at the end.
        ("leases", ("get", "create", "update", "delete")): None,
    }
    binding = _find(objects, "RoleBinding", "pipeline-runner-rolls-out-models")
    assert binding["roleRef"]["name"] == "canary-rollout"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}
    ]
