"""``mlops rollout --target kubernetes``'s target against the fake Kubernetes API and a real sink.

The fake API (``kserve_status_fake``) runs KServe's and Knative's traffic logic; in front of it
a thin WSGI layer answers the two other API paths the target uses: the Service proxy to the
payload sink (forwarded to a real ``serving.payload_sink`` under uvicorn) and Events. The
"traffic" of each window is the CloudEvents the payload logger would post, split by the share
the fake cluster routes at that moment, posted to the real sink over HTTP.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import urllib3
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from serving import kubernetes_lease, kubernetes_target
from serving.canary_analysis import Thresholds
from serving.deploy import deploy_inference_service
from serving.inference_service import STORAGE_URI_ANNOTATION, PredictorSettings
from serving.kubernetes_signals import KubernetesTarget, read_sink_metrics
from serving.payload_sink import PayloadCounter
from serving.rollout import EXIT_PROMOTED, EXIT_ROLLED_BACK, RolloutPlan, run_rollout
from tests.unit.kserve_status_fake import FakeCluster, write_kubeconfig
from tests.unit.test_payload_sink import sink  # noqa: F401 - the sink fixture

NS, NAME = "kubeflow-user", "breast-cancer"
_HTTP = urllib3.PoolManager()
_PROXY = re.compile(r"^/api/v1/namespaces/([^/]+)/services/([^/]+)/proxy/metrics$")
_EVENTS = re.compile(r"^/api/v1/namespaces/([^/]+)/events$")


class Api:
    """The fake cluster plus the Service proxy to the sink and the Events the target creates."""

    def __init__(self, cluster: FakeCluster, sink_url: str) -> None:
        self.cluster, self.sink_url = cluster, sink_url
        self.events: list[dict[str, Any]] = []
        self.proxied: list[str] = []

    def wsgi(self, environ: Any, start_response: Any) -> Any:
        request = Request(environ)
        proxy, events = _PROXY.match(request.path), _EVENTS.match(request.path)
        if proxy and proxy.group(2) != "mlops-payload-sink:http":
            message = f'services "{proxy.group(2).split(":")[0]}" not found'
            status = {"kind": "Status", "status": "Failure", "message": message, "code": 404}
            response = Response(json.dumps(status), status=404, content_type="application/json")
        elif proxy and request.method == "GET":
            self.proxied.append(f"{proxy.group(1)}/{proxy.group(2)}")
            text = _HTTP.request("GET", self.sink_url + "/metrics").data
            response = Response(text, content_type="text/plain")
        elif events and request.method == "POST":
            self.events.append(json.loads(request.get_data()))
            response = Response(request.get_data(), status=201, content_type="application/json")
        else:
            return self.cluster.wsgi(environ, start_response)
        return response(environ, start_response)


@pytest.fixture
def api(
    sink: tuple[str, PayloadCounter],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Api]:
    found = Api(FakeCluster(), sink[0])
    monkeypatch.setattr(kubernetes_target, "POLL_INTERVAL_S", 0.01)
    server = make_server("127.0.0.1", 0, found.wsgi, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = write_kubeconfig(f"http://127.0.0.1:{server.server_port}", tmp_path / "kc")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    yield found
    server.shutdown()
    thread.join()


def _store(tmp_path: Path) -> Path:
    """Two versions whose metadata holds the training bins (four features, edges 0.5, 3.0)."""
    features = {n: {"bin_edges": [0.5, 3.0], "bin_fractions": [0.2, 0.3, 0.5]} for n in "abcd"}
    for version in (1, 2):
        directory = tmp_path / "store" / NAME / str(version)
        directory.mkdir(parents=True)
        metadata = {"feature_names": list("abcd"), "reference_statistics": {"features": features}}
        (directory / "metadata.json").write_text(json.dumps(metadata))
    return tmp_path / "store"


def _deploy_two_versions(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for version in (1, 2):
        settings = PredictorSettings(NAME, str(store / NAME / str(version)), version, NS, 10)
        deploy_inference_service(settings, "kubernetes", tmp_path, 30)


class Traffic:
    """What the payload logger posts while a window passes: 200 requests split by the share.

    From window ``bad_at`` on (1-based), the canary predicts ``1`` for every row.
    """

    def __init__(self, api: Api, canary_predicts: int | None, bad_at: int | None = None) -> None:
        self.api, self.canary_predicts = api, canary_predicts
        self.rng = np.random.default_rng(7)
        self.sent = 0
        self.bad_at, self.window = bad_at, 0

    def __call__(self, _seconds: float) -> None:
        self.window += 1
        if self.bad_at is not None and self.window >= self.bad_at:
            self.canary_predicts = 1
        traffic = self.api.cluster.predictor_status(NAME, NS)["traffic"]
        for target in traffic:
            for _ in range(2 * int(target["percent"])):
                self._post(target["revisionName"], bool(target["latestRevision"]))

    def _storage_uri(self, revision: str) -> str:
        """The storage URI on the Revision's pods (KServe's annotation, as the fake writes it)."""
        for service in self.api.cluster.services.values():
            for found in service.revisions:
                if found.name == revision:
                    return str(found.template["metadata"]["annotations"][STORAGE_URI_ANNOTATION])
        raise AssertionError(f"no Revision {revision}")

    def _post(self, revision: str, canary: bool) -> None:
        self.sent += 1
        row = self.rng.choice([0.2, 1.0, 4.0], size=4, p=[0.2, 0.3, 0.5])
        label = int(row[0] > 3.0)  # the stable model's rule
        if canary and self.canary_predicts is not None:
            label = self.canary_predicts
        # As the agent sends them (tests/fixtures/kserve_payload_logger/README.md): every pod's
        # Ce-Source is the same; the pod's storage URI annotation names the version.
        headers = {
            "Ce-Id": f"id-{self.sent}",
            "Ce-Source": "http://localhost:9081/",
            "Ce-Specversion": "1.0",
            "Ce-Inferenceservicename": NAME,
            "Ce-Namespace": NS,
            "Ce-Component": "predictor",
            "Ce-Endpoint": "",
            "Ce-Metadata": "{}",
            "Ce-Annotations": json.dumps(
                {STORAGE_URI_ANNOTATION: self._storage_uri(revision)}, separators=(",", ":")
            ),
            "Content-Type": "application/json",
        }
        request = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64"}]}
        request["inputs"][0]["data"] = row.tolist()
        response = {"id": headers["Ce-Id"], "model_name": NAME, "model_version": None}
        response["outputs"] = [{"name": "output-0", "shape": [1], "datatype": "INT64"}]
        response["outputs"][0]["data"] = [label]
        events = [
            ("request", request, "2026-11-23T22:00:00.100123456Z"),
            ("response", response, "2026-11-23T22:00:00.104987654Z"),
        ]
        # The agent's 5 workers deliver in any order: every other response comes first.
        for kind, body, at in events[:: -1 if self.sent % 2 else 1]:
            event = headers | {"Ce-Type": f"org.kubeflow.serving.inference.{kind}", "Ce-Time": at}
            sent = _HTTP.request("POST", self.api.sink_url + "/", json=body, headers=event)
            assert sent.status == 202


def _rollout(
    api: Api,
    tmp_path: Path,
    canary_predicts: int | None,
    steps: tuple[int, ...] = (10, 50, 100),
    bad_at: int | None = None,
) -> Any:
    _deploy_two_versions(tmp_path)
    target = KubernetesTarget(NAME, NS, tmp_path, tracking_uri=None, settle_s=0)
    # 100 canary rows at 50%: input drift is judged there (a promote needs it judged once).
    thresholds = Thresholds(min_requests=15, min_drift_rows=100)
    plan = RolloutPlan(steps=steps, interval_s=1, thresholds=thresholds)
    return run_rollout(target, plan, sleep=Traffic(api, canary_predicts, bad_at))


def test_a_good_canary_is_stepped_to_all_traffic_and_the_event_says_promoted(
    api: Api, tmp_path: Path
) -> None:
    result = _rollout(api, tmp_path, canary_predicts=None)

    assert (result.outcome, result.exit_code) == ("promoted", EXIT_PROMOTED)
    # The last step, 100, is the promote: no canaryTrafficPercent 100, no window judged there.
    assert [s.step for s in result.steps] == [10, 50]
    assert api.cluster.replaced[-3:] == [10, 50, None] and 100 not in api.cluster.replaced
    assert (result.pair.stable_version, result.pair.canary_version) == ("1", "2")
    predictor = api.cluster.predictor_status(NAME, NS)
    assert [(t["revisionName"], t["percent"]) for t in predictor["traffic"]] == [
        (f"{NAME}-predictor-00002", 100)
    ]
    assert "canaryTrafficPercent" not in api.cluster.objects[(NS, NAME)]["spec"]["predictor"]
    assert [e["type"] for e in api.events] == ["Normal"]
    assert json.loads(api.events[0]["message"])["outcome"] == "promoted"
    assert set(api.proxied) == {f"{NS}/mlops-payload-sink:http"}


def test_a_canary_predicting_one_class_is_rolled_back_at_the_first_step(
    api: Api, tmp_path: Path
) -> None:
    result = _rollout(api, tmp_path, canary_predicts=1)

    assert (result.outcome, result.exit_code) == ("rolled-back", EXIT_ROLLED_BACK)
    assert [s.step for s in result.steps] == [10]
    assert "class_divergence" in result.steps[0].verdict.failing
    predictor = api.cluster.predictor_status(NAME, NS)
    served = {t["revisionName"]: t["percent"] for t in predictor["traffic"] if t["percent"]}
    assert served == {f"{NAME}-predictor-00001": 100}
    assert api.events[0]["type"] == "Warning"
    assert api.events[0]["involvedObject"]["kind"] == "InferenceService"


def test_the_sink_unreachable_through_the_proxy_fails_in_one_line_naming_the_service(
    api: Api, tmp_path: Path
) -> None:
    with pytest.raises(
        RuntimeError, match=r"kubeflow-user/other-sink: services \"other-sink\" not found"
    ):
        read_sink_metrics(NS, service="other-sink")


def test_the_pipeline_step_logs_each_window_and_returns_the_report_page(
    api: Api, tmp_path: Path
) -> None:
    from serving.kubernetes_signals import run_cluster_rollout

    _deploy_two_versions(tmp_path)
    lines: list[str] = []
    result, page = run_cluster_rollout(
        NAME, NS, "10,100", 1.0, 15, None, lines.append, sleep=Traffic(api, canary_predicts=1)
    )
    assert result.outcome == "rolled-back"
    step_logs = [json.loads(line) for line in lines if line.startswith("{")]
    assert [e["event"] for e in step_logs] == ["rollout-step", "rollout-outcome"]
    assert step_logs[0]["decision"] == "rollback"
    assert "class_divergence" in page and "rolled-back" in page


def test_malformed_steps_are_refused_before_the_cluster_is_touched(api: Api) -> None:
    from serving.kubernetes_signals import run_cluster_rollout

    with pytest.raises(ValueError, match="steps"):
        run_cluster_rollout(NAME, NS, "10,5", 1.0, 15, None)
    assert api.cluster.log == []


def test_the_pipelines_cluster_deploy_logs_payloads_to_the_sink(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from components.deploy_model import deploy_model
    from mlops import registry
    from serving import deploy

    # The registry is not what this checks, and MLflow takes seconds to open a store.
    monkeypatch.setattr(deploy, "sync_aliases", lambda *_: None)
    monkeypatch.setattr(registry, "register_version_once", lambda *_: None)

    deploy_model.python_func(
        storage_uri=str(_store(tmp_path) / NAME / "1"),
        model_version=1,
        model_name=NAME,
        namespace=NS,
        canary_traffic_percent=10,
        service_account="",
        target="kubernetes",
        state_dir=str(tmp_path),
        tracking_uri="unused",
        mlflow_run_id="unused",
    )
    logger = api.cluster.objects[(NS, NAME)]["spec"]["predictor"]["logger"]
    assert logger["url"] == f"http://mlops-payload-sink.{NS}.svc.cluster.local/"
    assert logger["mode"] == "all"


def test_mlops_rollout_with_target_kubernetes_steps_the_cluster_and_rolls_back_a_silent_canary(
    api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI's ``--target kubernetes`` drives the cluster, not a local server: with no traffic
    at all the canary is held, then rolled back, and the stable revision serves everything."""
    from click.testing import CliRunner

    from mlops import registry
    from mlops.cli import main

    _deploy_two_versions(tmp_path)
    # The registry is not what this checks (the CLI refuses a missing one: test_cli).
    monkeypatch.setattr(registry, "registry_problem", lambda *_: None)
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    arguments = ["rollout", NAME, "--target", "kubernetes", "-n", NS, "--steps", "10,100"]
    arguments += ["--interval", "0.2", "--max-holds", "1", "--min-requests", "5"]
    result = CliRunner().invoke(main, arguments)

    assert result.exit_code == EXIT_ROLLED_BACK, result.output
    assert "rolled-back" in result.output
    predictor = api.cluster.predictor_status(NAME, NS)
    served = {t["revisionName"]: t["percent"] for t in predictor["traffic"] if t["percent"]}
    assert served == {f"{NAME}-predictor-00001": 100}
    assert set(api.proxied) == {f"{NS}/mlops-payload-sink:http"}
    assert api.events[-1]["type"] == "Warning"


def test_the_sinks_version_counts_are_credited_to_the_one_revision_serving_that_version() -> None:
    from serving.canary_analysis import RevisionCounts, Snapshot
    from serving.kubernetes_signals import by_revision

    counted = Snapshot(
        revisions={
            "v1": RevisionCounts(model_version="1", requests=90),
            "v2": RevisionCounts(model_version="2", requests=10),
            "v3": RevisionCounts(model_version="3", requests=5),
        }
    )
    mapped = by_revision(counted, {"m-predictor-00001": "1", "m-predictor-00002": "2"})
    assert {k: c.requests for k, c in mapped.revisions.items()} == {
        "m-predictor-00001": 90,
        "m-predictor-00002": 10,
        "v3": 5,  # served by no Revision in the traffic: credited to none
    }
    # Two Revisions serving one version cannot be told apart: neither is credited.
    same = by_revision(counted, {"m-predictor-00001": "1", "m-predictor-00002": "1"})
    assert "m-predictor-00001" not in same.revisions and same.get("v1").requests == 90


def test_read_metrics_reads_each_revision_once_and_maps_the_sinks_versions(
    api: Api, tmp_path: Path
) -> None:
    _deploy_two_versions(tmp_path)
    target = KubernetesTarget(NAME, NS, tmp_path, tracking_uri=None, settle_s=0)
    Traffic(api, canary_predicts=None)(1.0)
    before = len([m for m, _ in api.cluster.log if m == "GET revisions"])
    first, second = target.read_metrics(), target.read_metrics()
    reads = len([m for m, _ in api.cluster.log if m == "GET revisions"]) - before
    assert reads == 2  # the two Revisions in the traffic, once each
    stable, canary = f"{NAME}-predictor-00001", f"{NAME}-predictor-00002"
    assert (first.get(stable).requests, first.get(canary).requests) == (180, 20)
    assert (first.get(stable).model_version, first.get(canary).model_version) == ("1", "2")
    assert second.get(canary).requests == 20


class HumanAt(Traffic):
    """Good traffic; before window ``at`` a human runs ``mlops promote`` / ``mlops rollback``."""

    def __init__(self, api: Api, at: int, percent: int | None) -> None:
        super().__init__(api, canary_predicts=None)
        self.at, self.percent, self.windows = at, percent, 0

    def __call__(self, seconds: float) -> None:
        self.windows += 1
        if self.windows == self.at:
            kubernetes_target.set_canary_percent(NAME, NS, self.percent, timeout_s=30)
        super().__call__(seconds)


@pytest.mark.parametrize(("percent", "by"), [(0, "a rollback"), (None, "a promote")])
def test_a_humans_promote_or_rollback_stops_the_cluster_rollout_and_stays(
    api: Api, tmp_path: Path, percent: int | None, by: str
) -> None:
    from serving.rollout import EXIT_STOPPED

    _deploy_two_versions(tmp_path)
    target = KubernetesTarget(NAME, NS, tmp_path, tracking_uri=None, settle_s=0)
    plan = RolloutPlan((10, 50, 100), 1, Thresholds(min_requests=15, min_drift_rows=100))

    result = run_rollout(target, plan, sleep=HumanAt(api, at=2, percent=percent))

    assert (result.outcome, result.exit_code) == ("stopped", EXIT_STOPPED)
    assert result.reason.startswith(f"stopped by {by}")
    stored = api.cluster.objects[(NS, NAME)]["spec"]["predictor"]
    assert stored.get("canaryTrafficPercent") == percent  # the human's, not the rollout's 50
    assert json.loads(api.events[-1]["message"])["outcome"] == "stopped"
    assert api.cluster.leases == {}  # released


def test_a_second_cluster_rollout_is_refused_while_the_lease_is_held(
    api: Api, tmp_path: Path
) -> None:
    from serving.inference_service import RolloutLockedError

    _deploy_two_versions(tmp_path)
    kubernetes_lease.acquire_lease(NAME, NS, "the-other-rollout")
    target = KubernetesTarget(NAME, NS, tmp_path, tracking_uri=None, settle_s=0)
    before = json.dumps(api.cluster.objects[(NS, NAME)]["spec"])

    with pytest.raises(RolloutLockedError, match="held by the-other-rollout"):
        run_rollout(target, RolloutPlan((10, 100), 1), sleep=Traffic(api, None))

    assert json.dumps(api.cluster.objects[(NS, NAME)]["spec"]) == before


def test_a_rollback_at_the_last_judged_step_leaves_the_stable_rolled_out(
    api: Api, tmp_path: Path
) -> None:
    result = _rollout(api, tmp_path, canary_predicts=None, steps=(10, 50, 90, 100), bad_at=3)

    assert result.outcome == "rolled-back" and [s.step for s in result.steps] == [10, 50, 90]
    predictor = api.cluster.predictor_status(NAME, NS)
    assert predictor["latestRolledoutRevision"] == f"{NAME}-predictor-00001"
    store = tmp_path / "store" / NAME
    (store / "3").mkdir()
    (store / "3" / "metadata.json").write_text((store / "2" / "metadata.json").read_text())
    settings = PredictorSettings(NAME, str(store / "3"), 3, NS, 10)
    applied = deploy_inference_service(settings, "kubernetes", tmp_path, 30)
    split = applied["status"]["components"]["predictor"]["traffic"]
    assert {t["revisionName"]: t["percent"] for t in split} == {
        f"{NAME}-predictor-00003": 10,
        f"{NAME}-predictor-00001": 90,
    }
