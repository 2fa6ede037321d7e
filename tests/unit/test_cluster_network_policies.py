"""The model namespace's NetworkPolicies: every pod is selected, and each admits only its clients.

Offline, over the rendered overlays (``kubectl kustomize``):

- checkov's CKV2_K8S_6 ("Minimize the admission of pods which lack an associated NetworkPolicy",
  bridgecrewio/checkov checkov/kubernetes/checks/graph_checks/
  RequireAllPodsToHaveNetworkPolicy.yaml):
  every pod of the overlay (Deployment and Job templates) is selected by a NetworkPolicy of its
  namespace;
- who gets in: each policy is evaluated, as the API defines a NetworkPolicy (an ingress rule
  admits a peer that matches one ``from`` item; a peer with namespaceSelector and podSelector
  must match both; ipBlock is for addresses outside the pod network), against the pods that are
  meant to connect, described by the labels their owners give them:

  - a pipeline step: namespace ``kubeflow``, ``pipelines.kubeflow.org/v2_component: "true"``
    (kubeflow/pipelines 2.17.0 backend/src/v2/compiler/argocompiler/argo.go: the Workflow's
    ``podMetadata``) and Argo's ``workflows.argoproj.io/workflow``;
  - a predictor pod: the InferenceService ``serving.inference_service`` builds, labelled as
    KServe labels the Knative template (kserve v0.20.0 pkg/controller/v1beta1/inferenceservice/
    components/predictor.go ``buildObjectMeta``: the isvc's and the predictor's labels, then
    ``serving.kserve.io/inferenceservice`` and ``component: predictor``), plus Knative's own;
  - the rendered Deployments' and the Job's pod templates;
  - the ingress gateway: ``app: istio-ingressgateway`` in ``istio-system`` (the label
    ``make kind-up`` waits on);
  - the API server's Service proxy, from a node address (kind's docker network), not a pod.

Every namespace carries ``kubernetes.io/metadata.name: <name>`` (set by the API server since
Kubernetes 1.22, KEP-2161). Whether kind's CNI enforces all this is for the e2e workflow.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.conftest import render_overlay

WORKLOAD_KINDS = ("Deployment", "Job", "StatefulSet", "DaemonSet", "ReplicaSet", "Pod")
KIND_POD_SUBNET = (
    "10.244.0.0/16"  # kubernetes-sigs/kind v0.30.0 pkg/apis/config/v1alpha4/default.go
)


@dataclass(frozen=True)
class Client:
    """Who connects: a pod (namespace and labels) or, with ``address`` only, a node."""

    name: str
    namespace: str | None
    labels: dict[str, str] = field(default_factory=dict)
    address: str = "10.244.0.17"  # a pod address, unless a node


def matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A LabelSelector against labels: matchLabels and every matchExpression must hold.

    k8s.io/apimachinery pkg/apis/meta/v1/helpers.go ``LabelSelectorAsSelector``; an empty
    selector selects everything.
    """
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        present = key in labels
        ok = {
            "In": present and labels.get(key) in (values or []),
            "NotIn": not present or labels.get(key) not in (values or []),
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not ok:
            return False
    return True


def _peer_admits(peer: dict[str, Any], policy_namespace: str, client: Client) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        address = ipaddress.ip_address(client.address)
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if client.namespace is None:  # a node: selectors name pods only
        return False
    if "namespaceSelector" in peer:
        namespace_labels = {"kubernetes.io/metadata.name": client.namespace}
        if not matches(peer["namespaceSelector"], namespace_labels):
            return False
    elif client.namespace != policy_namespace:  # a podSelector alone: the policy's namespace
        return False
    return "podSelector" not in peer or matches(peer["podSelector"], client.labels)


def admitted_ports(policy: dict[str, Any], client: Client) -> set[Any]:
    """The ports a NetworkPolicy's ingress rules open to ``client`` ("*": every port)."""
    ports: set[Any] = set()
    for rule in policy["spec"].get("ingress") or []:
        peers = rule.get("from")
        if not peers or any(
            _peer_admits(p, policy["metadata"]["namespace"], client) for p in peers
        ):
            ports |= {p["port"] for p in rule.get("ports") or [{"port": "*"}]}
    return ports


def _workloads(objects: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, str]]]:
    """(name, namespace, pod labels) of every pod the overlay makes."""
    found = []
    for obj in objects:
        if obj["kind"] in WORKLOAD_KINDS:
            template = obj if obj["kind"] == "Pod" else obj["spec"]["template"]
            labels = dict(template["metadata"].get("labels") or {})
            found.append((obj["metadata"]["name"], obj["metadata"]["namespace"], labels))
    return found


def _policies(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == "NetworkPolicy"]


def _model_namespace(objects: list[dict[str, Any]]) -> str:
    (namespace,) = [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"]
    return str(namespace)


def _predictor_labels(namespace: str) -> dict[str, str]:
    """A predictor pod's labels, from the InferenceService the deploy step builds."""
    from serving.inference_service import PredictorSettings, build_inference_service, to_dict

    isvc = to_dict(
        build_inference_service(
            PredictorSettings(
                name="breast-cancer",
                namespace=namespace,
                storage_uri="s3://models/breast-cancer/3",
                model_version=3,
                service_account="kserve-minio-sa",
            )
        )
    )
    return {
        **(isvc["metadata"].get("labels") or {}),
        **(isvc["spec"]["predictor"].get("labels") or {}),
        "serving.kserve.io/inferenceservice": isvc["metadata"]["name"],
        "component": "predictor",
        # Knative's, on every pod of a Revision (knative/serving pkg/reconciler/revision).
        "serving.knative.dev/revision": "breast-cancer-predictor-00002",
        "serving.knative.dev/service": "breast-cancer-predictor",
    }


def _clients(objects: list[dict[str, Any]]) -> dict[str, Client]:
    namespace = _model_namespace(objects)
    clients = {
        "pipeline step": Client(
            "pipeline step",
            "kubeflow",
            {
                "pipelines.kubeflow.org/v2_component": "true",
                "workflows.argoproj.io/workflow": "breast-cancer-training-x7k2p",
            },
        ),
        "predictor": Client("predictor", namespace, _predictor_labels(namespace)),
        "ingress gateway": Client(
            "ingress gateway",
            "istio-system",
            {"app": "istio-ingressgateway", "istio": "ingressgateway"},
        ),
        "API server proxy": Client("API server proxy", None, address="172.18.0.2"),
        "another pod here": Client("another pod here", namespace, {"run": "curl"}),
        "a pod elsewhere": Client("a pod elsewhere", "default", {"run": "curl"}),
        "a KFP pod that is no step": Client(
            "a KFP pod that is no step", "kubeflow", {"app": "ml-pipeline-ui"}
        ),
        "a step-labelled pod here": Client(
            "a step-labelled pod here", namespace, {"pipelines.kubeflow.org/v2_component": "true"}
        ),
    }
    for name, pod_namespace, labels in _workloads(objects):
        clients[name] = Client(name, pod_namespace, labels)
    return clients


# Who each workload serves (its clients), on which named port. Everyone else gets nothing.
SERVES = {
    "minio": (
        "api",
        {
            "pipeline step",
            "predictor",
            "mlflow",
            "web-form",
            "mlops-payload-sink",
            "create-buckets",
        },
    ),
    "mlflow": ("http", {"pipeline step"}),
    "mlops-payload-sink": ("http", {"predictor", "API server proxy"}),
    "web-form": ("http", {"ingress gateway"}),
    "create-buckets": (None, set()),
}


@pytest.fixture(scope="module", params=["dev", "prod"])
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render_overlay(request.param)


def test_every_pod_of_the_overlay_is_selected_by_a_network_policy(objects: Any) -> None:
    # CKV2_K8S_6: a pod with no NetworkPolicy selecting it accepts every connection.
    workloads = _workloads(objects)
    assert {name for name, _, _ in workloads} == set(SERVES)
    for name, namespace, labels in workloads:
        selecting = [
            p["metadata"]["name"]
            for p in _policies(objects)
            if p["metadata"]["namespace"] == namespace and matches(p["spec"]["podSelector"], labels)
        ]
        assert selecting, f"no NetworkPolicy selects {name}'s pods in {namespace}"


def test_each_policy_selects_exactly_the_workload_it_is_named_for(objects: Any) -> None:
    for policy in _policies(objects):
        assert "Ingress" in policy["spec"]["policyTypes"]
        selected = {
            name
            for name, namespace, labels in _workloads(objects)
            if namespace == policy["metadata"]["namespace"]
            and matches(policy["spec"]["podSelector"], labels)
        }
        assert selected == {policy["metadata"]["name"]}
        assert policy["spec"]["podSelector"], "an empty podSelector would select the predictors"


def test_each_workload_admits_only_the_clients_it_serves_on_its_port(objects: Any) -> None:
    clients = _clients(objects)
    policies = {p["metadata"]["name"]: p for p in _policies(objects)}
    for workload, (port, expected) in SERVES.items():
        admitted = {
            name: ports
            for name, client in clients.items()
            if (ports := admitted_ports(policies[workload], client))
        }
        assert set(admitted) == expected, f"{workload} admits {sorted(admitted)}"
        assert all(ports == {port} for ports in admitted.values()), (workload, admitted)


def test_the_named_ports_are_the_containers_ports(objects: Any) -> None:
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    for workload, (port, _) in SERVES.items():
        if port is None:
            continue
        (container,) = deployments[workload]["spec"]["template"]["spec"]["containers"]
        assert port in {p["name"] for p in container["ports"]}, (workload, port)


def test_the_sinks_ip_block_leaves_out_the_pod_network_kind_uses() -> None:
    import yaml

    from tests.unit.test_cluster_manifests import ROOT

    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    # No podSubnet of its own: kind's default, which the policy's `except` names.
    assert "podSubnet" not in (config.get("networking") or {})
    (sink,) = [
        p for p in _policies(render_overlay("dev")) if p["metadata"]["name"] == "mlops-payload-sink"
    ]
    blocks = [
        peer["ipBlock"]
        for rule in sink["spec"]["ingress"]
        for peer in rule["from"]
        if "ipBlock" in peer
    ]
    assert blocks == [{"cidr": "0.0.0.0/0", "except": [KIND_POD_SUBNET]}]


def test_the_evaluator_reads_selectors_as_the_api_does() -> None:
    labels = {"app": "a", "tier": "web"}
    assert matches({}, labels) and matches(None, labels)
    assert matches({"matchLabels": {"app": "a"}}, labels)
    assert not matches({"matchLabels": {"app": "a", "x": "y"}}, labels)
    assert matches(
        {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]}, labels
    )
    assert not matches(
        {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["web"]}]}, labels
    )
    assert not matches({"matchExpressions": [{"key": "x", "operator": "Exists"}]}, labels)
    assert matches({"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}, labels)
    peer = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "other"}},
        "podSelector": {"matchLabels": {"app": "a"}},
    }
    policy = {
        "metadata": {"namespace": "ns"},
        "spec": {"ingress": [{"from": [peer], "ports": [{"port": 80}]}]},
    }
    assert admitted_ports(policy, Client("c", "other", {"app": "a"})) == {80}
    assert admitted_ports(policy, Client("c", "ns", {"app": "a"})) == set()  # wrong namespace
    assert admitted_ports(policy, Client("c", "other", {"app": "b"})) == set()  # wrong pod
    open_rule = {"metadata": {"namespace": "ns"}, "spec": {"ingress": [{}]}}
    assert admitted_ports(open_rule, Client("c", "x")) == {"*"}
