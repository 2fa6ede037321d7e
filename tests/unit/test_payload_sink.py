"""The payload sink, run by uvicorn on loopback, fed KServe v0.20.0's CloudEvents.

The fixtures (``tests/fixtures/kserve_payload_logger/``, each citing the upstream source it
follows) carry the agent's headers and real KServe ModelServer response bodies. The sink counts
per model version: its ``revision`` label is ``v<version>`` (the rollout maps versions to
Knative Revisions, ``test_kubernetes_signals``).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import urllib3
import uvicorn

from serving import payload_counts, payload_sink
from serving.canary_analysis import parse_exposition
from serving.payload_sink import PayloadCounter, Reference, create_app

FIXTURES = Path(__file__).parent.parent / "fixtures" / "kserve_payload_logger"
STABLE, CANARY = "v1", "v2"


def _event(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / f"{name}.json").read_text()))


def _reference(uri: str) -> Reference:
    # Four features, bins split at 0.5 and 3.0 (three bins), classes 0..2.
    edges = tuple(np.asarray([0.5, 3.0]) for _ in range(4))
    return Reference(frozenset({"0", "1", "2"}), ("a", "b", "c", "d"), edges)


@pytest.fixture
def sink() -> Iterator[tuple[str, PayloadCounter]]:
    counter = PayloadCounter(references=_reference)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(counter), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the sink did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", counter
    server.should_exit = True
    thread.join(5)


def _post(url: str, event: dict[str, Any]) -> int:
    answer = urllib3.request("POST", url + "/", body=event["body"], headers=event["headers"])
    return int(answer.status)


def _metrics(url: str) -> str:
    return str(urllib3.request("GET", url + "/metrics").data.decode())


def test_paired_events_count_per_revision_in_the_canary_signal_families(
    sink: tuple[str, PayloadCounter],
) -> None:
    url, _ = sink
    for name in ("stable_request", "stable_response", "canary_request", "canary_response"):
        assert _post(url, _event(name)) == 202
    snapshot = parse_exposition(_metrics(url), "iris")
    stable, canary = snapshot.get(STABLE), snapshot.get(CANARY)
    assert (stable.model_version, canary.model_version) == ("1", "2")
    assert (stable.requests, stable.errors_5xx, canary.requests) == (1, 0, 1)
    # The ModelServer's answers: version 1 [0, 2, 1], version 2 [0, 2, 2].
    assert stable.classes == {"0": 1, "1": 1, "2": 1}
    assert canary.classes == {"0": 1, "2": 2}
    # 12.86 ms between the request's and the response's nanosecond ce-time: the 0.025 s
    # bucket, not 0.01.
    assert stable.latency_buckets[0.01] == 0 and stable.latency_buckets[0.025] == 1
    # Rows (5.1, 3.5, 1.4, 0.2), (6.7, 3.0, 5.2, 2.3), (6.0, 2.7, 5.1, 1.6); bins split at 0.5, 3.0.
    assert stable.input_bins["a"] == {"2": 3}
    assert stable.input_bins["d"] == {"0": 1, "1": 2}


def test_an_event_without_a_kserve_type_is_refused_with_the_attribute_named(
    sink: tuple[str, PayloadCounter],
) -> None:
    url, _ = sink
    event = _event("stable_request")
    event["headers"]["Ce-Type"] = "com.example.other"
    answer = urllib3.request("POST", url + "/", body=event["body"], headers=event["headers"])
    assert answer.status == 400
    assert "ce-type" in answer.json()["error"]


def test_classes_outside_the_models_own_count_as_other(sink: tuple[str, PayloadCounter]) -> None:
    url, _ = sink
    request, response = _event("canary_request"), _event("canary_response")
    body = json.loads(response["body"])
    body["outputs"][0]["data"] = [7, 1, 1]
    response["body"] = json.dumps(body)
    _post(url, request)
    _post(url, response)
    assert parse_exposition(_metrics(url), "iris").get(CANARY).classes == {"_other": 1, "1": 2}


def test_the_inference_service_logs_every_payload_to_the_sink_naming_the_version() -> None:
    from serving.inference_service import (
        PredictorSettings,
        build_inference_service,
        payload_sink_url,
        to_dict,
    )

    url = payload_sink_url("kserve-test")
    built = to_dict(
        build_inference_service(
            PredictorSettings(
                "iris", "s3://models/iris/2", 2, "kserve-test", payload_logger_url=url
            )
        )
    )
    assert built["spec"]["predictor"]["logger"] == {
        "mode": "all",
        "url": "http://mlops-payload-sink.kserve-test.svc.cluster.local/",
        # The annotation the sink reads the version from (the fixtures' Ce-Annotations).
        "metadataAnnotations": [payload_sink.STORAGE_URI_ANNOTATION],
        # The mirrored requests' mark reaches the sink in Ce-Metadata.
        "metadataHeaders": [payload_sink.SHADOW_HEADER],
    }
    plain = to_dict(build_inference_service(PredictorSettings("iris", "s3://models/iris/2", 2)))
    assert "logger" not in plain["spec"]["predictor"]


def _serve(app: Any) -> tuple[str, uvicorn.Server, threading.Thread]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}", server, thread


@pytest.fixture
def mirrored() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A sink mirroring every stable request to a canary route answering as version 2 did."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    received: list[dict[str, Any]] = []

    async def infer(request: Request) -> JSONResponse:
        received.append({"headers": dict(request.headers), "body": await request.json()})
        return JSONResponse(json.loads(_event("canary_response")["body"]))

    canary_app = Starlette(routes=[Route("/v2/models/{name}/infer", infer, methods=["POST"])])
    canary_url, canary, canary_thread = _serve(canary_app)
    app = create_app(
        PayloadCounter(references=_reference),
        shadow_url=canary_url + "/v2/models/{model}/infer",
        shadow_sample=1.0,
    )
    url, sink_server, sink_thread = _serve(app)
    yield url, received
    for server, thread in ((sink_server, sink_thread), (canary, canary_thread)):
        server.should_exit = True
        thread.join(5)


def _shadow(url: str) -> tuple[dict[str, float], dict[str, float]]:
    canary = parse_exposition(_metrics(url), "iris").get(CANARY)
    return canary.shadow, canary.shadow_rows


def test_stable_requests_are_mirrored_to_the_canary_route_and_compared_per_row(
    mirrored: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = mirrored
    # The canary revision is seen first (it is the newest): the stable's pairs get mirrored.
    for name in ("canary_request", "canary_response", "stable_request", "stable_response"):
        assert _post(url, _event(name)) == 202
    deadline = time.monotonic() + 10
    while not _shadow(url)[0]:
        assert time.monotonic() < deadline, "no mirrored request was compared"
        time.sleep(0.05)
    # The stable answered [0, 2, 1], the canary [0, 2, 2]: two rows of three agree.
    assert _shadow(url) == ({"disagreed": 1}, {"agreed": 2, "disagreed": 1})
    (mirror,) = received  # the canary's own requests are not mirrored
    assert mirror["body"] == json.loads(_event("stable_request")["body"])
    assert mirror["headers"]["x-mlops-shadow"] == "1"


def test_the_canarys_logged_answers_to_mirrors_are_not_counted_as_client_traffic(
    mirrored: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = mirrored
    for name in ("canary_request", "canary_response"):
        event = _event(name)
        event["headers"]["Ce-Metadata"] = json.dumps({"X-Mlops-Shadow": ["1"]})
        assert _post(url, event) == 202
    assert parse_exposition(_metrics(url), "iris").get(CANARY).requests == 0
    assert received == []


def test_a_hostile_model_name_is_refused_and_never_becomes_a_mirror_url(
    mirrored: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = mirrored
    for name in ("canary_request", "canary_response"):
        assert _post(url, _event(name)) == 202
    for name in ("stable_request", "stable_response"):
        event = _event(name)
        event["headers"]["Ce-Inferenceservicename"] = "mlflow:5000/api/2.0/mlflow/runs/delete#"
        answer = urllib3.request("POST", url + "/", body=event["body"], headers=event["headers"])
        assert answer.status == 400
        assert "ce-inferenceservicename" in answer.json()["error"]
    time.sleep(0.2)
    assert received == []


def test_over_http_a_duplicate_is_409_and_an_oversized_body_413(
    sink: tuple[str, PayloadCounter], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = sink
    assert _post(url, _event("canary_request")) == 202
    assert _post(url, _event("canary_request")) == 409
    monkeypatch.setattr(payload_counts, "MAX_BODY_BYTES", 64)
    assert _post(url, _event("stable_request")) == 413
    # Chunked, without a Content-Length: refused as it passes the limit.
    event = _event("stable_request")
    answer = urllib3.PoolManager().request(
        "POST",
        url + "/",
        body=iter([event["body"].encode()] * 2),
        headers=event["headers"],
        chunked=True,
    )
    assert answer.status == 413


def test_a_slow_store_read_does_not_block_the_sinks_event_loop() -> None:
    released = threading.Event()

    def slow(uri: str) -> Reference:
        assert released.wait(10), "the test did not release the read"
        return _reference(uri)

    url, server, thread = _serve(create_app(PayloadCounter(references=slow)))
    try:
        with __import__("concurrent.futures").futures.ThreadPoolExecutor(1) as pool:
            posted = pool.submit(_post, url, _event("canary_request"))
            time.sleep(0.2)
            # The read is still blocked, in its thread: the loop answers meanwhile.
            health = urllib3.request("GET", url + "/healthz", timeout=2)
            assert health.status == 200 and not posted.done()
            released.set()
            assert posted.result(10) == 202
    finally:
        server.should_exit = True
        thread.join(5)


def test_the_sink_binds_loopback_unless_told_an_address(monkeypatch: pytest.MonkeyPatch) -> None:
    bound: list[tuple[str, int]] = []
    monkeypatch.setattr(uvicorn, "run", lambda _app, host, port, **_: bound.append((host, port)))
    monkeypatch.delenv("MLOPS_SINK_HOST", raising=False)
    monkeypatch.setenv("PORT", "8123")
    payload_sink.main([])
    monkeypatch.setenv("MLOPS_SINK_HOST", "10.244.0.7")  # the Deployment's status.podIP
    payload_sink.main([])
    payload_sink.main(["--host", "::1", "--port", "9000"])
    assert bound == [("127.0.0.1", 8123), ("10.244.0.7", 8123), ("::1", 9000)]
