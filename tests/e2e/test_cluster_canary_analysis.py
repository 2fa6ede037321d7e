"""The automated canary analysis in the cluster: a good canary promoted, a degraded one rolled back.

Runs against `make kind-up` + `make image` (the payload sink runs the project image), after
tests/e2e/test_cluster_rollout.py or on its own. Each case submits a pipeline run that deploys a
canary at 10%, sends steady load of real rows from several clients through the ingress, and
runs the same rollout `mlops rollout --target kubernetes` runs (``run_rollout`` with the
``KubernetesTarget``): the signals come from KServe's payload logger through the sink, read via
the API server's Service proxy. Every load request must be answered 200 throughout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import NAMESPACE

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("cluster")]

MODEL = os.environ.get("MLOPS_E2E_MODEL", "breast-cancer")
RUN_TIMEOUT_S = 1800
MLOPS = str(Path(sys.executable).parent / "mlops")
CLIENTS = 4
STEPS = (10, 50, 100)
INTERVAL_S = 30.0
MIN_REQUESTS = 30


def _submit(kfp_host: str, *extra: str) -> None:
    args = [MLOPS, "submit", "--host", kfp_host, "--namespace", NAMESPACE, "--model-name", MODEL]
    args += ["--canary-percent", "10", "--experiment", "e2e", "--timeout", str(RUN_TIMEOUT_S)]
    result = subprocess.run(
        [*args, *extra], capture_output=True, text=True, timeout=RUN_TIMEOUT_S + 120
    )
    assert result.returncode == 0, f"mlops submit failed:\n{result.stdout}{result.stderr}"


class Load:
    """Several clients posting real rows through the ingress until stopped; counts answers."""

    def __init__(self, ingress: str, host: str) -> None:
        from sklearn.datasets import load_breast_cancer

        self.url, self.host = f"{ingress}/v2/models/{MODEL}/infer", host
        self.rows = load_breast_cancer().data
        self.codes: dict[int, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(CLIENTS)]

    def _client(self, seed: int) -> None:
        i = seed * 97
        with httpx.Client(timeout=30, headers={"Host": self.host}) as client:
            while not self._stop.is_set():
                rows = self.rows[[i % len(self.rows), (i + 1) % len(self.rows)]]
                body = {"inputs": [{"name": "input-0", "shape": [2, rows.shape[1]]}]}
                body["inputs"][0] |= {"datatype": "FP64", "data": rows.ravel().tolist()}
                try:
                    code = client.post(self.url, json=body).status_code
                except httpx.HTTPError:
                    code = 0
                with self._lock:
                    self.codes[code] = self.codes.get(code, 0) + 1
                i += 2

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def _rollout(mlflow_uri: str) -> Any:
    from serving.canary_analysis import Thresholds
    from serving.kubernetes_signals import KubernetesTarget
    from serving.rollout import RolloutPlan, run_rollout

    target = KubernetesTarget(MODEL, NAMESPACE, Path("."), mlflow_uri)
    plan = RolloutPlan(STEPS, INTERVAL_S, Thresholds(min_requests=MIN_REQUESTS))
    return run_rollout(target, plan, lambda record: print(record.line()))


def _served(name: str) -> dict[str, int]:
    from serving import kubernetes_target

    traffic = kubernetes_target.get(name, NAMESPACE)["status"]["components"]["predictor"]
    return {t["revisionName"]: t["percent"] for t in traffic["traffic"] if t.get("percent")}


def test_a_good_canary_is_promoted_with_no_failed_request(
    kfp_host: str, mlflow_uri: str, ingress: str
) -> None:
    _submit(kfp_host)
    from serving import kubernetes_target

    before = kubernetes_target.get(MODEL, NAMESPACE)
    canary = before["status"]["components"]["predictor"]["latestCreatedRevision"]
    host = before["status"]["url"].split("://", 1)[1]
    with Load(ingress, host) as load:
        time.sleep(5)  # the load reaches both revisions before the first window
        result = _rollout(mlflow_uri)
    assert result.outcome == "promoted", result.reason
    # The last step, 100, is the promote itself: no window is judged there.
    assert [s.step for s in result.steps if s.verdict.decision != "hold"] == list(STEPS[:-1])
    assert _served(MODEL) == {canary: 100}
    assert set(load.codes) == {200}, load.codes


def test_a_degraded_canary_is_rolled_back_at_the_first_step_with_no_failed_request(
    kfp_host: str, mlflow_uri: str, ingress: str
) -> None:
    from mlops import registry
    from serving import kubernetes_target

    champion_before = registry.version_of_alias(mlflow_uri, MODEL, "champion")
    _submit(kfp_host, "--label-noise", "0.5", "--min-accuracy", "0", "--max-degradation", "1")
    isvc = kubernetes_target.get(MODEL, NAMESPACE)
    stable = isvc["status"]["components"]["predictor"]["latestRolledoutRevision"]
    host = isvc["status"]["url"].split("://", 1)[1]
    with Load(ingress, host) as load:
        time.sleep(5)
        result = _rollout(mlflow_uri)
    assert result.outcome == "rolled-back", result.reason
    assert result.steps[-1].step == STEPS[0]
    assert result.steps[-1].verdict.failing, "the rollback names the failing signal"
    assert _served(MODEL) == {stable: 100}
    assert set(load.codes) == {200}, load.codes
    assert registry.version_of_alias(mlflow_uri, MODEL, "champion") == champion_before
