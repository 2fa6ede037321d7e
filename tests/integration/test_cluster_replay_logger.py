"""Replay of KServe's payload-logger delivery into ``python -m serving.payload_sink``.

The sender follows kserve/kserve@v0.20.0:

- ``pkg/logger/handler.go``: per inference, a request event queued when the request arrives
  (``OccurrenceTime`` then), the response event queued when the model has answered, and only
  for status 200; one ``Ce-Id`` for both (a new UUID: the clients send none);
- ``pkg/logger/worker.go`` / ``dispatcher.go``: a work queue of 100 (``LoggerWorkerQueueSize``,
  the handler blocks when it is full), each item handed by its own goroutine to whichever of
  the 5 workers (``cmd/agent/main.go`` ``--workers`` default) is free first, so events leave
  in any order; each worker builds a new cloudevents client per event and posts in binary mode
  (cloudevents/sdk-go@v2.16.2 ``v2/protocol/http/write_request.go``, ``headers.go``: attribute
  headers ``Ce-Id``, ``Ce-Source``, ``Ce-Specversion``, ``Ce-Type``, ``Ce-Time`` in RFC 3339 with
  nanoseconds and trailing zeros dropped (``types.FormatTime``: Go's ``RFC3339Nano``), the
  extensions ``Ce-Recordedtime``, ``Ce-Inferenceservicename``, ``Ce-Namespace``,
  ``Ce-Component``, ``Ce-Endpoint``, ``Ce-Metadata``, ``Ce-Annotations``). Here every event
  gets its own connection; Go's default transport would keep up to two idle ones per host,
  so in the cluster some events share one: the order is then kept better, not worse;
- ``cmd/agent/main.go``: ``Ce-Source`` is ``http://localhost:9081/`` (the injector's
  ``--source-uri`` is the still-empty pod name); ``pkg/webhook/admission/pod/agent_injector.go``:
  ``--metadata-headers X-Mlops-Shadow`` and ``--metadata-annotations
  internal.serving.kserve.io/storage-initializer-sourceuri=<the pod's storage URI>``, which
  ``serving.inference_service`` asks for (the pod annotations KServe's ``addLoggerAnnotations``
  writes).

The sink runs as the rendered Deployment runs it (``kubectl kustomize manifests/overlays/dev``,
its env expanded as the kubelet does), with what names the cluster replaced: its port and
address (loopback), MinIO (a moto S3 server holding the versions' metadata) and the
cluster-local gateway (an HTTP proxy, ``HTTP_PROXY``, that answers only the hosts Knative's
Ingress routes to the canary's ``latest`` tag, as ``serving.knative_hosts`` derives them; the
shadow URL itself is the rendered one). The rollout's ``KubernetesTarget.read_metrics`` reads
the counts through the fake Kubernetes API (``tests/unit/kserve_status_fake.py``).
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import queue
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import urllib3

from serving import kubernetes_target, payload_counts
from serving.deploy import deploy_inference_service
from serving.inference_service import SHADOW_HEADER, STORAGE_URI_ANNOTATION, PredictorSettings
from serving.knative_hosts import predictor_route, tag_hosts
from serving.kubernetes_signals import KubernetesTarget
from tests.conftest import find_object, render_overlay
from tests.integration.s3_server import S3Server
from tests.unit.kserve_status_fake import FakeCluster, serve, write_kubeconfig
from tests.unit.test_knative_hosts import kubelet_expand

ROOT = Path(__file__).parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "kserve_payload_logger"
MODEL = "replay-iris"
WORKERS = 5  # cmd/agent/main.go --workers
QUEUE_SIZE = 100  # pkg/logger/worker.go LoggerWorkerQueueSize
STABLE_PAIRS, CANARY_PAIRS, NOT_200, MIRRORED = 540, 60, 5, 20
FLOOD, FLOOD_BODY = 800, 100_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def go_time(ns: int) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: nanoseconds, trailing zeros (and a bare ``.``) dropped."""
    seconds, fraction = divmod(ns, 10**9)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:09d}".rstrip("0")
    return f"{text}.{digits}Z" if digits else f"{text}Z"


@dataclass
class LogRequest:
    """``pkg/logger/types.go`` ``LogRequest``: what the handler queues for one event."""

    kind: str
    event_id: str
    body: bytes
    occurred_ns: int
    storage_uri: str
    metadata: dict[str, list[str]] = field(default_factory=dict)
    sent_at: float = 0.0


class Agent:
    """The agent's logger: the handler's queue, the dispatcher and 5 workers posting events."""

    def __init__(self, sink: str, namespace: str, seed: int = 7) -> None:
        self.host, port = sink.removeprefix("http://").split(":")
        self.port = int(port)
        self.namespace = namespace
        self.work: queue.Queue[LogRequest | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self.waiting: list[LogRequest] = []
        self.ready = threading.Condition()
        self.rng = random.Random(seed)
        self.statuses: list[int] = []
        self.sent: list[LogRequest] = []
        self.closed = False
        self.threads = [threading.Thread(target=self._dispatch, daemon=True)]
        self.threads += [threading.Thread(target=self._worker, daemon=True) for _ in range(5)]
        for thread in self.threads:
            thread.start()

    def log(self, event: LogRequest) -> None:
        """``QueueLogRequest``: blocks while the work queue is full."""
        self.work.put(event)

    def _dispatch(self) -> None:
        # Each item gets its own goroutine waiting for a free worker: whichever worker frees
        # first takes whichever waiting item the scheduler runs first (here: a random one).
        while (item := self.work.get()) is not None:
            with self.ready:
                self.waiting.append(item)
                self.ready.notify()
        with self.ready:
            self.closed = True
            self.ready.notify_all()

    def _worker(self) -> None:
        while True:
            with self.ready:
                while not self.waiting and not self.closed:
                    self.ready.wait()
                if not self.waiting:
                    return
                item = self.waiting.pop(self.rng.randrange(len(self.waiting)))
            self._send(item)

    def _send(self, item: LogRequest) -> None:
        headers = {
            "User-Agent": "Go-http-client/1.1",
            "Ce-Id": item.event_id,
            "Ce-Source": "http://localhost:9081/",
            "Ce-Specversion": "1.0",
            "Ce-Type": f"org.kubeflow.serving.inference.{item.kind}",
            "Ce-Time": go_time(item.occurred_ns),
            "Content-Type": "application/json",
            "Ce-Recordedtime": go_time(time.time_ns()),
            "Ce-Inferenceservicename": MODEL,
            "Ce-Namespace": self.namespace,
            "Ce-Component": "predictor",
            "Ce-Endpoint": "",
            "Ce-Metadata": json.dumps(item.metadata, separators=(",", ":")),
            "Ce-Annotations": json.dumps(
                {STORAGE_URI_ANNOTATION: item.storage_uri}, separators=(",", ":")
            ),
            "Accept-Encoding": "gzip",
        }
        item.sent_at = time.monotonic()
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:  # a new connection per event
            connection.request("POST", "/", body=item.body, headers=headers)
            answer = connection.getresponse()
            answer.read()
            status = answer.status
        finally:
            connection.close()
        with self.ready:
            self.statuses.append(status)
            self.sent.append(item)

    def close(self) -> None:
        """Deliver everything queued, then stop the workers."""
        self.work.put(None)
        for thread in self.threads:
            thread.join(120)


class Gateway(http.server.BaseHTTPRequestHandler):
    """The cluster-local gateway, as the sink's HTTP proxy: only routed hosts get an answer."""

    routed: set[str] = set()
    answer: bytes = b""
    hosts: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        host = self.headers.get("Host", "")
        Gateway.hosts.append(host)
        routed = host in Gateway.routed and self.headers.get(SHADOW_HEADER) == "1"
        body = Gateway.answer if routed else b"not found"
        self.send_response(200 if routed else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        """Quiet."""


def _rss_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} for {pid}")


@dataclass
class Replay:
    sink: str
    pid: int
    namespace: str
    storage_uris: dict[str, str]
    answers: dict[str, bytes]
    request: bytes

    def metrics(self) -> str:
        return str(urllib3.request("GET", self.sink + "/metrics").data.decode())

    def sample(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        return sum(
            s.value
            for family in text_string_to_metric_families(self.metrics())
            for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )


def _publish_metadata(s3: S3Server) -> dict[str, str]:
    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        region_name="us-east-1",
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
    )
    features = {n: {"bin_edges": [0.5, 3.0], "bin_fractions": [0.2, 0.3, 0.5]} for n in "abcd"}
    metadata = {
        "classes": [0, 1, 2],
        "feature_names": list("abcd"),
        "reference_statistics": {"features": features},
    }
    uris = {}
    for version in ("1", "2"):
        key = f"{MODEL}/{version}/metadata.json"
        client.put_object(Bucket="models", Key=key, Body=json.dumps(metadata).encode())
        uris[version] = f"s3://models/{MODEL}/{version}"
    return uris


def _sink_env(s3: S3Server, port: int, proxy: str) -> tuple[str, dict[str, str]]:
    """The rendered Deployment's env, kubelet-expanded; cluster addresses made loopback."""
    deployment = find_object(render_overlay("dev"), "Deployment", "mlops-payload-sink")
    namespace = deployment["metadata"]["namespace"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "serving.payload_sink"]
    fields = {"metadata.namespace": namespace, "status.podIP": "127.0.0.1"}
    secrets = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
    env: dict[str, str] = {}
    for variable in container["env"]:
        source = variable.get("valueFrom", {})
        if "value" in variable:
            env[variable["name"]] = kubelet_expand(variable["value"], env)
        elif "fieldRef" in source:
            env[variable["name"]] = fields[source["fieldRef"]["fieldPath"]]
        else:
            env[variable["name"]] = secrets[source["secretKeyRef"]["key"]]
    assert env["MLOPS_SINK_HOST"] == "127.0.0.1"
    env |= {"PORT": str(port), "MLOPS_S3_ENDPOINT": s3.endpoint}  # the pod's port and MinIO
    env |= {"HTTP_PROXY": proxy, "NO_PROXY": "127.0.0.1,localhost"}  # the gateway
    return namespace, env


@pytest.fixture
def replay(s3_server: S3Server, tmp_path: Path) -> Iterator[Replay]:
    bodies = json.loads((FIXTURES / "bodies.json").read_text())
    gateway = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    port = _free_port()
    namespace, env = _sink_env(s3_server, port, f"http://127.0.0.1:{gateway.server_port}")
    Gateway.routed = tag_hosts(predictor_route(MODEL), namespace, "latest")
    Gateway.answer, Gateway.hosts = bodies["response_v2"].encode(), []
    child_env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **env}
    sink = subprocess.Popen([sys.executable, "-m", "serving.payload_sink"], cwd=ROOT, env=child_env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert sink.poll() is None, "the sink exited"
            try:
                if urllib3.request("GET", url + "/healthz", timeout=1).status == 200:
                    break
            except urllib3.exceptions.HTTPError:
                pass
            assert time.monotonic() < deadline, "the sink did not answer /healthz"
            time.sleep(0.1)
        yield Replay(
            url,
            sink.pid,
            namespace,
            _publish_metadata(s3_server),
            {"1": bodies["response_v1"].encode(), "2": bodies["response_v2"].encode()},
            bodies["request"].encode(),
        )
    finally:
        sink.terminate()
        sink.wait(10)
        gateway.shutdown()


def _inferences(replay: Replay, agent: Agent) -> None:
    """What the handler queues: 90/10 stable/canary, a few non-200s and mirrored requests."""
    plan = ["1"] * STABLE_PAIRS + ["2"] * CANARY_PAIRS + ["500"] * NOT_200 + ["m"] * MIRRORED
    random.Random(3).shuffle(plan)
    for what in plan:
        version = "2" if what == "m" else "1" if what == "500" else what
        event_id, uri = str(uuid.uuid4()), replay.storage_uris[version]
        metadata = {SHADOW_HEADER: ["1"]} if what == "m" else {}
        arrived = time.time_ns()
        agent.log(LogRequest("request", event_id, replay.request, arrived, uri, metadata))
        if what != "500":  # handler.go: a response event only for status 200
            answered = arrived + random.Random(event_id).randint(2_000_000, 20_000_000)
            body = replay.answers[version]
            agent.log(LogRequest("response", event_id, body, answered, uri, metadata))


def _deploy_two_versions(replay: Replay, tmp_path: Path) -> KubernetesTarget:
    for version in ("1", "2"):
        uri = replay.storage_uris[version]
        settings = PredictorSettings(MODEL, uri, int(version), replay.namespace, 10)
        deploy_inference_service(settings, "kubernetes", tmp_path, 30)
    return KubernetesTarget(MODEL, replay.namespace, tmp_path, None, metrics=replay.metrics)


def test_the_agents_delivery_is_paired_per_version_and_read_per_revision_by_the_rollout(
    replay: Replay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = Agent(replay.sink, replay.namespace)
    started = time.monotonic()
    _inferences(replay, agent)
    agent.close()
    seconds = time.monotonic() - started
    events = len(agent.sent)
    assert events == 2 * (STABLE_PAIRS + CANARY_PAIRS + MIRRORED) + NOT_200
    assert set(agent.statuses) == {202}
    started_at = {(e.event_id, e.kind): e.sent_at for e in agent.sent}
    responses_first = sum(
        started_at[(e.event_id, "response")] < started_at[(e.event_id, "request")]
        for e in agent.sent
        if e.kind == "request" and (e.event_id, "response") in started_at
    )
    assert responses_first >= 20, f"only {responses_first} responses were sent first"

    monkeypatch.setattr(kubernetes_target, "POLL_INTERVAL_S", 0.01)
    with serve(FakeCluster()) as api:
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(api, tmp_path / "kubeconfig")))
        snapshot = _deploy_two_versions(replay, tmp_path).read_metrics()
    stable, canary = (
        snapshot.get(f"{MODEL}-predictor-00001"),
        snapshot.get(f"{MODEL}-predictor-00002"),
    )
    # Every answered pair counted once, under the Revision serving its version; the canary's
    # mirrored requests and the unanswered ones not (yet) at all.
    assert (stable.requests, stable.errors_5xx, stable.model_version) == (STABLE_PAIRS, 0, "1")
    assert (canary.requests, canary.errors_5xx, canary.model_version) == (CANARY_PAIRS, 0, "2")
    assert stable.classes == {"0": STABLE_PAIRS, "1": STABLE_PAIRS, "2": STABLE_PAIRS}
    assert canary.classes == {"0": CANARY_PAIRS, "2": 2 * CANARY_PAIRS}
    assert stable.input_bins["a"] == {"2": 3 * STABLE_PAIRS}  # the bins read from the store
    assert stable.latency_buckets[0.001] == 0 and stable.latency_buckets[0.025] == STABLE_PAIRS
    assert replay.sample("mlops_sink_pending_events") == NOT_200
    assert replay.sample("mlops_sink_refused_total") == 0
    # The stable's pairs mirrored through the gateway to routed hosts only, compared per row:
    # version 1 answered [0, 2, 1], version 2 [0, 2, 2].
    assert Gateway.hosts and set(Gateway.hosts) <= Gateway.routed
    compared = canary.shadow.get("disagreed", 0)
    assert compared >= 20 and canary.shadow.get("failed", 0) == 0
    assert canary.shadow_rows == {"agreed": 2 * compared, "disagreed": compared}
    print(
        f"\nlogger replay: {events} events in {seconds:.2f} s = {events / seconds:.0f} events/s "
        f"(5 senders, a connection each); {responses_first} responses sent before their "
        f"request; {compared:.0f} mirrored and compared"
    )


def test_a_flood_of_unanswered_requests_stays_within_the_pending_bytes_bound(
    replay: Replay,
) -> None:
    rss_before = _rss_kib(replay.pid, "VmRSS")
    padding = FLOOD_BODY // len("1.25, " * 4)  # rows of ~100 KB of JSON in all
    tensor = {"name": "input-0", "shape": [padding, 4], "datatype": "FP64"}
    body = json.dumps({"inputs": [tensor | {"data": [1.25] * (4 * padding)}]}).encode()
    agent = Agent(replay.sink, replay.namespace)
    started = time.monotonic()
    for _ in range(FLOOD):
        agent.log(
            LogRequest("request", str(uuid.uuid4()), body, time.time_ns(), replay.storage_uris["1"])
        )
    agent.close()
    seconds = time.monotonic() - started
    assert set(agent.statuses) == {202}
    pending_bytes = replay.sample("mlops_sink_pending_bytes")
    pending = replay.sample("mlops_sink_pending_events")
    assert pending_bytes <= payload_counts.MAX_PENDING_BYTES < FLOOD * len(body)
    # What did not fit was counted as failed, oldest first: none is lost uncounted.
    assert replay.sample("mlops_inference_requests_total", code="5xx") == FLOOD - pending
    peak = _rss_kib(replay.pid, "VmHWM")
    assert (peak - rss_before) * 1024 < payload_counts.MAX_PENDING_BYTES + 64 * 2**20
    print(
        f"\nflood: {FLOOD} x {len(body) // 1000} KB unanswered in {seconds:.1f} s; "
        f"{pending:.0f} kept ({pending_bytes / 2**20:.1f} MiB), {FLOOD - pending:.0f} counted "
        f"5xx; sink RSS {rss_before // 1024} MiB before, peak {peak // 1024} MiB"
    )
