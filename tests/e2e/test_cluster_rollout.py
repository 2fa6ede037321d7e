"""The cluster path end to end: KFP runs, the InferenceService, v2, canary, rollback, promote.

Runs in order against `make kind-up` (and usually `make image submit` before it):
a pipeline run succeeds and leaves one revision with all traffic; it answers v2 requests through
the ingress; a second run makes a canary at the set percent with both revisions in
``status.components.predictor.traffic``; rollback sends everything back to the previous
revision; promote gives the latest revision 100%. Modeled on kserve/kserve
``test/e2e/predictor/test_canary.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import NAMESPACE

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("cluster")]

MODEL = os.environ.get("MLOPS_E2E_MODEL", "breast-cancer")
CANARY_PERCENT = 25
RUN_TIMEOUT_S = 1800
MLOPS = str(Path(sys.executable).parent / "mlops")
# What earlier tests learned, for the later ones (the tests run in file order).
seen: dict[str, Any] = {}


def _mlops(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [MLOPS, *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S + 120,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, f"mlops {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    return result.stdout


def _submit(kfp_host: str, canary_percent: int) -> str:
    return _mlops(
        "submit",
        "--host",
        kfp_host,
        "--namespace",
        NAMESPACE,
        "--model-name",
        MODEL,
        "--canary-percent",
        str(canary_percent),
        "--experiment",
        "e2e",
        "--timeout",
        str(RUN_TIMEOUT_S),
    )


def _isvc() -> dict[str, Any]:
    from serving import kubernetes_target

    return kubernetes_target.get(MODEL, NAMESPACE)


def _traffic(isvc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(isvc["status"]["components"]["predictor"]["traffic"])


def _latest(isvc: dict[str, Any]) -> dict[str, Any]:
    (latest,) = [t for t in _traffic(isvc) if t.get("latestRevision")]
    return latest


def _version(isvc: dict[str, Any]) -> str:
    """The model version of the InferenceService's spec, i.e. of its latest revision."""
    from serving.inference_service import MODEL_VERSION_LABEL

    return str(isvc["metadata"]["labels"][MODEL_VERSION_LABEL])


def _aliases(mlflow_uri: str) -> tuple[str | None, str | None]:
    """The versions MLflow's ``champion`` and ``challenger`` aliases name."""
    from mlops import registry

    found = [registry.version_of_alias(mlflow_uri, MODEL, a) for a in ("champion", "challenger")]
    champion, challenger = (str(f[0]) if f else None for f in found)
    return champion, challenger


def _ready(isvc: dict[str, Any]) -> bool:
    conditions = isvc.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _infer(ingress: str, isvc: dict[str, Any], rows: list[list[float]]) -> dict[str, Any]:
    """A v2 (Open Inference Protocol) request through the ingress, with the isvc's Host."""
    host = isvc["status"]["url"].split("://", 1)[1]
    body = {
        "inputs": [
            {
                "name": "input-0",
                "shape": [len(rows), len(rows[0])],
                "datatype": "FP32",
                "data": [value for row in rows for value in row],
            }
        ]
    }
    last: Exception | None = None
    for _ in range(20):  # the route may still be settling after a traffic change
        try:
            response = httpx.post(
                f"{ingress}/v2/models/{MODEL}/infer",
                json=body,
                headers={"Host": host},
                timeout=30,
            )
            if response.status_code == 200:
                return dict(response.json())
            last = AssertionError(f"HTTP {response.status_code}: {response.text[:300]}")
        except httpx.HTTPError as err:
            last = err
        time.sleep(3)
    raise AssertionError(f"no v2 answer from {MODEL} through {ingress} (Host {host}): {last}")


@pytest.fixture(scope="module")
def rows() -> list[list[float]]:
    from sklearn.datasets import load_breast_cancer

    return [[float(v) for v in row] for row in load_breast_cancer().data[:3]]


def test_a_kfp_run_of_the_pipeline_succeeds(kfp_host: str, mlflow_uri: str) -> None:
    output = _submit(kfp_host, CANARY_PERCENT)
    assert "finished: SUCCEEDED" in output
    if _latest(_isvc()).get("percent") != 100:  # a model already served: finish its rollout
        _mlops(
            "promote", MODEL, "--target", "kubernetes", "-n", NAMESPACE,
            env={"MLFLOW_TRACKING_URI": mlflow_uri},
        )  # fmt: skip


def test_the_inference_service_is_ready_with_one_revision_taking_all_traffic() -> None:
    isvc = _isvc()
    assert _ready(isvc), isvc.get("status")
    predictor = isvc["spec"]["predictor"]
    assert predictor["model"]["runtime"] == "kserve-sklearnserver"
    assert predictor["serviceAccountName"] == "kserve-minio-sa"
    assert "canaryTrafficPercent" not in predictor
    latest = _latest(isvc)
    assert latest["percent"] == 100
    seen["first_revision"] = latest["revisionName"]
    seen["first_version"] = _version(isvc)


def test_a_v2_request_through_the_ingress_returns_predictions(
    ingress: str, rows: list[list[float]]
) -> None:
    answer = _infer(ingress, _isvc(), rows)
    (output,) = answer["outputs"]
    assert output["name"] == "output-0"  # kserve-sklearnserver's name (MLServer says "predict")
    assert len(output["data"]) == len(rows)
    assert set(output["data"]) <= {0, 1}


def test_a_second_run_makes_a_canary_and_the_traffic_shows_both_revisions(
    kfp_host: str, ingress: str, rows: list[list[float]]
) -> None:
    output = _submit(kfp_host, CANARY_PERCENT)
    assert "finished: SUCCEEDED" in output
    isvc = _isvc()
    assert _ready(isvc)
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == CANARY_PERCENT
    latest = _latest(isvc)
    (previous,) = [t for t in _traffic(isvc) if not t.get("latestRevision")]
    assert latest["percent"] == CANARY_PERCENT
    assert previous["percent"] == 100 - CANARY_PERCENT
    assert previous["revisionName"] == seen["first_revision"] != latest["revisionName"]
    assert previous.get("tag") == "prev"
    seen["canary_revision"] = latest["revisionName"]
    assert len(_infer(ingress, isvc, rows)["outputs"][0]["data"]) == len(rows)


def test_rollback_returns_all_traffic_to_the_previous_revision(mlflow_uri: str) -> None:
    _mlops(
        "rollback", MODEL, "--target", "kubernetes", "-n", NAMESPACE,
        env={"MLFLOW_TRACKING_URI": mlflow_uri},
    )  # fmt: skip
    isvc = _isvc()
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 0
    previous = [t for t in _traffic(isvc) if t["revisionName"] == seen["first_revision"]]
    assert [t.get("percent") for t in previous if t.get("percent")] == [100]
    assert _latest(isvc).get("percent", 0) == 0
    # The champion is the version that serves 100%: the prev revision's (issue 8 item 9).
    assert _aliases(mlflow_uri) == (seen["first_version"], None)


def test_promote_gives_the_latest_revision_all_traffic(
    mlflow_uri: str, ingress: str, rows: list[list[float]]
) -> None:
    printed = _mlops(
        "promote", MODEL, "--target", "kubernetes", "-n", NAMESPACE,
        env={"MLFLOW_TRACKING_URI": mlflow_uri},
    )  # fmt: skip
    assert "LATESTREADYREVISION" in printed
    isvc = _isvc()
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    latest = _latest(isvc)
    assert latest["revisionName"] == seen["canary_revision"]
    assert latest["percent"] == 100
    predictor = isvc["status"]["components"]["predictor"]
    assert predictor["latestRolledoutRevision"] == seen["canary_revision"]
    assert _aliases(mlflow_uri) == (_version(isvc), None)
    assert len(_infer(ingress, isvc, rows)["outputs"][0]["data"]) == len(rows)
