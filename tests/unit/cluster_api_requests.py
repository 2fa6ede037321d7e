"""Every Kubernetes API request the cluster code makes, per identity: the offline RBAC check's
list (test_cluster_rbac.py) and the e2e's ``kubectl auth can-i`` list (tests/e2e).

Collected from the code, and checked against it: test_cluster_rbac.py runs the code against a
fake API that records each request's RBAC attributes and fails when one is not listed here.

- The pipeline's deploy and rollout steps run as KFP's ``pipeline-runner`` (namespace
  ``kubeflow``; kubeflow/pipelines 2.17.0 backend/src/apiserver/config/config.json): the
  InferenceService get / create / replace (``serving/kubernetes_target.py``), the Revisions'
  reads (``revision_versions``), the sink's ``/metrics`` through the Service proxy
  (``serving/kubernetes_signals.py`` ``read_sink_metrics``), the outcome's Event
  (``record_event``) and the rollout's Lease per InferenceService (get, create, renew, release).
- The release workflow runs as ``mlops-prod/mlops-release``: its preflight (``kubectl get
  service``, ``kubectl auth can-i``), ``kubectl port-forward svc/minio|mlflow`` in both
  namespaces (get the Service, list and get pods, pods/portforward), and ``mlops release``'s
  deploy in prod (``mlops/release.py`` -> ``serving.deploy``: get, create, replace, Revisions).
"""

from __future__ import annotations

from tests.unit.rbac import Request

KSERVE, KNATIVE, LEASES = "serving.kserve.io", "serving.knative.dev", "coordination.k8s.io"
MODEL = "breast-cancer"
PIPELINE_RUNNER = ("kubeflow", "pipeline-runner")
RELEASE = ("mlops-prod", "mlops-release")
DEV, PROD = "kubeflow-user", "mlops-prod"


def _deploys(namespace: str) -> list[Request]:
    return [
        Request("get", KSERVE, "inferenceservices", namespace, MODEL),
        Request("create", KSERVE, "inferenceservices", namespace),
        Request("update", KSERVE, "inferenceservices", namespace, MODEL),
        Request("get", KNATIVE, "revisions", namespace),  # any Revision of the model
    ]


def pipeline_requests(namespace: str) -> list[Request]:
    """What the deploy and rollout steps ask for in the model namespace ``namespace``."""
    return [
        *_deploys(namespace),
        Request("get", "", "services", namespace, "mlops-payload-sink:http", "proxy"),
        Request("create", "", "events", namespace),
        Request("get", LEASES, "leases", namespace),
        Request("create", LEASES, "leases", namespace),
        Request("update", LEASES, "leases", namespace),
        Request("delete", LEASES, "leases", namespace),
    ]


def _port_forwards(namespace: str) -> list[Request]:
    return [
        Request("get", "", "services", namespace, "minio"),
        Request("get", "", "services", namespace, "mlflow"),
        Request("list", "", "pods", namespace),
        Request("get", "", "pods", namespace),
        Request("create", "", "pods", namespace, subresource="portforward"),
        Request("get", "", "pods", namespace, subresource="portforward"),
    ]


def release_requests() -> list[Request]:
    """What the release workflow asks for, in both namespaces."""
    return [
        Request("create", "authorization.k8s.io", "selfsubjectaccessreviews", None),
        *_port_forwards(DEV),
        *_port_forwards(PROD),
        *_deploys(PROD),
    ]


def listed(request: Request, table: list[Request]) -> bool:
    """Whether ``request`` is a row of ``table`` (a row without a name covers every name)."""
    return any(
        (row.verb, row.group, row.resource, row.subresource, row.namespace)
        == (request.verb, request.group, request.resource, request.subresource, request.namespace)
        and row.name in (None, request.name)
        for row in table
    )
