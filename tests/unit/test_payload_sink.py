"""The payload sink, run by uvicorn on loopback, fed the recorded KServe v0.20.0 CloudEvents."""

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

from serving import payload_sink
from serving.canary_analysis import parse_exposition
from serving.payload_sink import PayloadCounter, Reference, create_app

FIXTURES = Path(__file__).parent.parent / "fixtures" / "kserve_payload_logger"
STABLE, CANARY = "iris-predictor-00001", "iris-predictor-00002"


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
    assert stable.classes == {"0": 1, "2": 1}
    assert canary.classes == {"0": 1, "1": 1}
    # 12 ms between the request's and the response's ce-time: the 0.025 s bucket, not 0.01.
    assert stable.latency_buckets[0.01] == 0 and stable.latency_buckets[0.025] == 1
    # Row 1 = 5.1, 3.5, 1.4, 0.2 and row 2 = 6.7, 3.0, 5.2, 2.3 in bins split at 0.5 and 3.0.
    assert stable.input_bins["a"] == {"2": 2}
    assert stable.input_bins["d"] == {"0": 1, "1": 1}


def test_a_request_without_response_counts_as_failed_after_the_timeout(
    sink: tuple[str, PayloadCounter], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = sink
    assert _post(url, _event("canary_request")) == 202
    assert parse_exposition(_metrics(url), "iris").get(CANARY).requests == 0
    monkeypatch.setattr(payload_sink, "RESPONSE_TIMEOUT_S", 0.0)
    canary = parse_exposition(_metrics(url), "iris").get(CANARY)
    assert (canary.requests, canary.errors_5xx) == (1, 1)
    # A late response finds nothing to pair: not counted twice.
    assert _post(url, _event("canary_response")) == 202
    assert parse_exposition(_metrics(url), "iris").get(CANARY).requests == 1


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
    body["outputs"][0]["data"] = [7, 1]
    response["body"] = json.dumps(body)
    _post(url, request)
    _post(url, response)
    assert parse_exposition(_metrics(url), "iris").get(CANARY).classes == {"_other": 1, "1": 1}


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
    """A sink mirroring every stable request to a canary route answering labels [0, 1]."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    received: list[dict[str, Any]] = []

    async def infer(request: Request) -> JSONResponse:
        received.append({"headers": dict(request.headers), "body": await request.json()})
        return JSONResponse({"outputs": [{"name": "output-0", "data": [0, 1]}]})

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
    # The stable answered [0, 2], the canary [0, 1]: one row of two agrees.
    assert _shadow(url) == ({"disagreed": 1}, {"agreed": 1, "disagreed": 1})
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
