"""The cluster's own answer to every request the rollout step and the release make.

The same list the offline check evaluates (tests/unit/cluster_api_requests.py, recorded from
the code), asked of the real API server with ``kubectl auth can-i --as=<the ServiceAccount>``:
what the offline evaluator cannot show (that the applied Roles and bindings are these, that
the authorizer agrees) is shown here. The release's prod rows need the prod overlay applied;
the e2e workflow applies dev only, so only the release's rows in the model namespace are asked.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.e2e.conftest import NAMESPACE, kubectl
from tests.unit import cluster_api_requests as calls
from tests.unit.rbac import Request

pytestmark = pytest.mark.e2e


def _can_i(identity: tuple[str, str], request: Request) -> tuple[int, str]:
    namespace, name = identity
    result = subprocess.run(
        [kubectl(), "auth", "can-i", *request.can_i(),
         f"--as=system:serviceaccount:{namespace}:{name}"],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    return result.returncode, (result.stdout + result.stderr).strip()


@pytest.mark.parametrize(
    "request_", calls.pipeline_requests(NAMESPACE), ids=lambda r: " ".join(r.can_i())
)
def test_kfps_pipeline_runner_may_make_each_request_of_the_deploy_and_rollout_steps(
    cluster: None, request_: Request
) -> None:
    code, answer = _can_i(calls.PIPELINE_RUNNER, request_)
    assert (code, answer) == (0, "yes"), f"{' '.join(request_.can_i())}: {answer}"


@pytest.mark.parametrize(
    "request_",
    [r for r in calls.release_requests() if r.namespace in (NAMESPACE, None)],
    ids=lambda r: " ".join(r.can_i()),
)
def test_the_release_service_account_may_port_forward_to_the_store_here(
    cluster: None, request_: Request
) -> None:
    code, answer = _can_i(calls.RELEASE, request_)
    assert (code, answer) == (0, "yes"), f"{' '.join(request_.can_i())}: {answer}"


@pytest.mark.parametrize(
    ("identity", "request_"),
    [
        (calls.PIPELINE_RUNNER, Request("delete", calls.KSERVE, "inferenceservices", NAMESPACE)),
        (calls.PIPELINE_RUNNER, Request("get", "", "secrets", NAMESPACE, "kserve-minio-s3")),
        (calls.PIPELINE_RUNNER, Request("get", "", "services", NAMESPACE, "mlflow:http", "proxy")),
        (calls.RELEASE, Request("create", calls.KSERVE, "inferenceservices", NAMESPACE)),
        (calls.RELEASE, Request("get", "", "secrets", NAMESPACE, "mlops-store-rw")),
    ],
    ids=lambda v: " ".join(v.can_i()) if isinstance(v, Request) else "/".join(v),
)  # fmt: skip
def test_what_neither_may_do_is_refused_by_the_cluster(
    cluster: None, identity: tuple[str, str], request_: Request
) -> None:
    code, answer = _can_i(identity, request_)
    assert (code, answer) == (1, "no"), f"{' '.join(request_.can_i())}: {answer}"


def test_kfp_runs_the_steps_as_pipeline_runner(cluster: None) -> None:
    namespace, name = calls.PIPELINE_RUNNER
    result = subprocess.run(
        [kubectl(), "get", "serviceaccount", name, "-n", namespace, "-o", "name"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout.strip() == f"serviceaccount/{name}", result.stderr
