"""Fixtures for the e2e tests: the kind cluster, and port-forwards to KFP, MLflow and the ingress.

A plain `pytest` run skips every test here, with the reason, when no cluster with KFP and KServe
is reachable. `make e2e` sets ``MLOPS_E2E_REQUIRED=1``: then a missing cluster or component is a
failure with the same reason, so `make e2e` cannot go green having tested nothing.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

NAMESPACE = os.environ.get("MLOPS_E2E_NAMESPACE", "kubeflow-user")
KFP_NAMESPACE = "kubeflow"
# kind-config.yaml maps the ingress gateway's NodePort here; `make kind-up` pins the NodePort.
KIND_INGRESS = "http://localhost:8081"


def _missing(reason: str) -> None:
    """Skip (plain `pytest`) or fail (`make e2e`, MLOPS_E2E_REQUIRED=1) with ``reason``."""
    if os.environ.get("MLOPS_E2E_REQUIRED") == "1":
        pytest.fail(f"make e2e needs the cluster: {reason}", pytrace=False)
    pytest.skip(reason)


def _skip_unless_cluster() -> None:
    from kubernetes import client, config

    try:
        # Explicitly: the client fixes its default path when first imported, which in a whole
        # `pytest` run may be under a unit test's fake KUBECONFIG.
        config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        )
    except Exception as err:  # noqa: BLE001 - any reason means: no cluster to test against
        _missing(f"no cluster reachable (no usable kubeconfig: {err}); run `make kind-up`")
        return
    try:
        client.VersionApi().get_code(_request_timeout=3)
    except Exception as err:  # noqa: BLE001
        _missing(f"no cluster reachable ({type(err).__name__}); run `make kind-up`")
        return
    apps = client.AppsV1Api()
    components = (
        (
            "KServe (CRD inferenceservices.serving.kserve.io)",
            lambda: client.ApiextensionsV1Api().read_custom_resource_definition(
                "inferenceservices.serving.kserve.io", _request_timeout=5
            ),
        ),
        (
            f"KFP (deployment {KFP_NAMESPACE}/ml-pipeline)",
            lambda: apps.read_namespaced_deployment(
                "ml-pipeline", KFP_NAMESPACE, _request_timeout=5
            ),
        ),
        (
            f"the manifests (deployment {NAMESPACE}/minio)",
            lambda: apps.read_namespaced_deployment("minio", NAMESPACE, _request_timeout=5),
        ),
    )
    for component, read in components:
        try:
            read()
        except Exception as err:  # noqa: BLE001
            reason = getattr(err, "reason", None) or type(err).__name__
            _missing(f"the cluster lacks {component} ({reason}); run `make kind-up`")
            return


@pytest.fixture(scope="session")
def cluster() -> None:
    """Skip unless the current kubeconfig reaches a cluster set up by `make kind-up`."""
    _skip_unless_cluster()


def kubectl() -> str:
    """The kubectl the Makefile uses (MLOPS_E2E_KUBECTL), else PATH's, else the .venv's."""
    beside_python = Path(sys.executable).parent / "kubectl"
    found = os.environ.get("MLOPS_E2E_KUBECTL") or shutil.which("kubectl")
    return found or str(beside_python)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _reachable(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def port_forward(namespace: str, service: str, port: int) -> Iterator[str]:
    """``kubectl port-forward`` to ``svc/service:port`` on a free local port; yields its URL."""
    local = _free_port()
    process = subprocess.Popen(
        [kubectl(), "port-forward", "-n", namespace, f"svc/{service}", f"{local}:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not _reachable(local):
            if process.poll() is not None or time.monotonic() > deadline:
                error = process.stderr.read() if process.stderr else ""
                pytest.fail(f"port-forward to {namespace}/svc/{service}:{port} failed: {error}")
            time.sleep(0.5)
        yield f"http://localhost:{local}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def kfp_host(cluster: None) -> Iterator[str]:
    """The KFP API through the UI's Service, as the docs port-forward it."""
    with port_forward(KFP_NAMESPACE, "ml-pipeline-ui", 80) as url:
        yield url


@pytest.fixture(scope="session")
def mlflow_uri(cluster: None) -> Iterator[str]:
    """The namespace's MLflow tracking server."""
    with port_forward(NAMESPACE, "mlflow", 5000) as url:
        yield url


@pytest.fixture(scope="session")
def ingress(cluster: None) -> Iterator[str]:
    """The Istio ingress gateway: kind's port mapping, else a port-forward to it."""
    if os.environ.get("MLOPS_E2E_INGRESS"):
        yield os.environ["MLOPS_E2E_INGRESS"]
    elif _reachable(int(KIND_INGRESS.rsplit(":", 1)[1])):
        yield KIND_INGRESS
    else:
        with port_forward("istio-system", "istio-ingressgateway", 80) as url:
            yield url
