"""The automated canary analysis in the cluster: a good canary promoted, a degraded one rolled back.

Runs against `make kind-up` + `make image` (the payload sink runs the project image), after
tests/e2e/test_cluster_rollout.py or on its own. Each case submits a pipeline run that deploys a
canary at 10% and sends steady load of real rows from several clients through the ingress
while the canary serves. The good canary is rolled out by the pipeline's own rollout step
(`mlops submit --rollout-steps`): the step's ServiceAccount and RBAC, its Output[HTML] report
and its Event on the InferenceService are what is tested. The degraded one is rolled out as
`mlops rollout --target kubernetes` does (``run_rollout`` with the ``KubernetesTarget``, from
this process). Either way the signals come from KServe's payload logger through the sink,
read via the API server's Service proxy. Every load request must be answered 200 throughout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
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
# The pipeline's rollout step, as `mlops submit` sets it (the pipeline parameters).
ROLLOUT_STEP_ARGS = (
    "--rollout-steps", ",".join(map(str, STEPS)),
    "--rollout-interval", str(INTERVAL_S),
    "--rollout-min-requests", str(MIN_REQUESTS),
)  # fmt: skip


def submit_arguments(kfp_host: str, *extra: str) -> list[str]:
    """``mlops submit``'s arguments for a 10% canary of MODEL (unit-tested against the CLI)."""
    args = ["submit", "--host", kfp_host, "--namespace", NAMESPACE, "--model-name", MODEL]
    args += ["--canary-percent", "10", "--experiment", "e2e", "--timeout", str(RUN_TIMEOUT_S)]
    return [*args, *extra]


def _submit(kfp_host: str, *extra: str) -> str:
    result = subprocess.run(
        [MLOPS, *submit_arguments(kfp_host, *extra)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S + 120,
    )
    assert result.returncode == 0, f"mlops submit failed:\n{result.stdout}{result.stderr}"
    return result.stdout


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


def _latest_created() -> str:
    from serving import kubernetes_target

    predictor = kubernetes_target.get(MODEL, NAMESPACE)["status"]["components"]["predictor"]
    return str(predictor.get("latestCreatedRevision", ""))


def _rollout_events(since: datetime) -> list[Any]:
    """The Events the rollout step recorded on the InferenceService since ``since``."""
    from kubernetes import client

    events = client.CoreV1Api().list_namespaced_event(
        NAMESPACE, field_selector=f"involvedObject.name={MODEL},reason=CanaryRollout"
    )
    return [e for e in events.items if (e.last_timestamp or e.event_time) >= since]


def test_the_pipelines_rollout_step_promotes_a_good_canary_with_no_failed_request(
    kfp_host: str, ingress: str
) -> None:
    import kfp

    from serving import kubernetes_target

    started = datetime.now(UTC).replace(microsecond=0)
    stable = _latest_created()
    host = kubernetes_target.get(MODEL, NAMESPACE)["status"]["url"].split("://", 1)[1]
    submitted = subprocess.Popen(
        [MLOPS, *submit_arguments(kfp_host, *ROLLOUT_STEP_ARGS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Traffic from the moment the canary exists: the step judges its first window right away.
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while _latest_created() == stable and submitted.poll() is None:
        assert time.monotonic() < deadline, "no canary revision appeared"
        time.sleep(2)
    canary = _latest_created()
    with Load(ingress, host) as load:
        output, _ = submitted.communicate(timeout=RUN_TIMEOUT_S)
    assert submitted.returncode == 0, f"mlops submit failed:\n{output}"
    assert "finished: SUCCEEDED" in output
    assert _served(MODEL) == {canary: 100}
    assert set(load.codes) == {200}, load.codes
    # The step's Output[HTML] is a recorded artifact of the run, and its Event says promoted.
    run_id = re.search(r"submitted run (\S+):", output).group(1)  # type: ignore[union-attr]
    tasks = kfp.Client(host=kfp_host).get_run(run_id).run_details.task_details
    (step,) = [t for t in tasks if t.display_name == "rollout"]
    assert str(step.state) == "SUCCEEDED"
    assert step.outputs["report"].artifact_ids
    (event, *_) = sorted(_rollout_events(started), key=lambda e: e.last_timestamp, reverse=True)
    assert event.type == "Normal"
    assert '"outcome": "promoted"' in event.message  # json.dumps(..., sort_keys=True)


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
