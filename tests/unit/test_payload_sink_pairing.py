"""The payload sink's pairing, timeouts and bounds, on KServe v0.20.0's events.

The agent hands each event to one of 5 workers that each post on a new connection
(kserve/kserve@v0.20.0 ``pkg/logger/dispatcher.go``, ``worker.go``), so a response may come
before its request; everything the sink is sent is hostile. The counter is driven directly with
the fixtures' headers, its clock a test's own: no sleeping, no timeout set to 0.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from serving import payload_counts, payload_sink
from serving.canary_analysis import RevisionCounts, parse_exposition
from serving.payload_sink import DuplicateEvent, PayloadCounter

FIXTURES = Path(__file__).parent.parent / "fixtures" / "kserve_payload_logger"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _event(name: str, **headers: str) -> tuple[dict[str, str], bytes]:
    event = json.loads((FIXTURES / f"{name}.json").read_text())
    found = {k.lower(): v for k, v in event["headers"].items()}
    found.update({k.replace("_", "-"): v for k, v in headers.items()})
    return found, event["body"].encode()


def _counter(clock: Clock | None = None, **options: Any) -> PayloadCounter:
    return PayloadCounter(references=lambda _: None, clock=clock or Clock(), **options)


def _counts(counter: PayloadCounter, revision: str) -> RevisionCounts:
    counter.expire()
    text = payload_sink.generate_latest(counter.registry).decode()
    return parse_exposition(text, "iris").get(revision)


def _metric(counter: PayloadCounter, name: str, **labels: str) -> float:
    return counter.registry.get_sample_value(name, labels) or 0.0


def test_a_response_that_arrives_before_its_request_waits_and_is_paired() -> None:
    clock = Clock()
    counter = _counter(clock)
    assert counter.receive(*_event("canary_response")) is None
    clock.now += 5
    paired = counter.receive(*_event("canary_request"))
    assert paired is not None and paired.predicted == ["0", "2", "2"]
    clock.now += 60  # long past the timeout: nothing is left to count as failed
    canary = _counts(counter, "v2")
    assert (canary.requests, canary.errors_5xx, canary.classes) == (1, 0, {"0": 1, "2": 2})
    # The latency is the ce-times' difference, whichever event came first.
    assert canary.latency_buckets[0.01] == 0 and canary.latency_buckets[0.025] == 1


def test_a_request_unanswered_for_thirty_seconds_is_counted_as_failed() -> None:
    clock = Clock()
    counter = _counter(clock)
    counter.receive(*_event("canary_request"))
    clock.now += 29.5
    assert _counts(counter, "v2").requests == 0  # still waiting
    clock.now += 1.0  # 30.5 s: past the 30 s timeout
    assert (_counts(counter, "v2").requests, _counts(counter, "v2").errors_5xx) == (1, 1)
    # A late response finds nothing to pair: not counted twice.
    assert counter.receive(*_event("canary_response")) is None
    assert _counts(counter, "v2").requests == 1


def test_the_response_timeout_is_thirty_seconds() -> None:
    # The model server answers long before; the analysis windows are a minute: 30 s, not 60.
    assert payload_counts.RESPONSE_TIMEOUT_S == 30.0
    assert _counter().response_timeout_s == 30.0


def test_an_answered_request_is_not_counted_again_as_failed_after_the_timeout() -> None:
    clock = Clock()
    counter = _counter(clock)
    counter.receive(*_event("stable_request"))
    counter.receive(*_event("stable_response"))
    clock.now += 10 * payload_counts.RESPONSE_TIMEOUT_S
    stable = _counts(counter, "v1")
    assert (stable.requests, stable.errors_5xx) == (1, 0)
    assert _metric(counter, "mlops_sink_pending_events") == 0


def test_past_the_pending_limit_the_oldest_request_is_counted_as_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(payload_counts, "MAX_PENDING", 2)
    counter = _counter()
    for n in range(3):
        counter.receive(*_event("canary_request", ce_id=f"request-{n}"))
    canary = _counts(counter, "v2")
    assert (canary.requests, canary.errors_5xx) == (1, 1)  # request-0, dropped and counted
    assert _metric(counter, "mlops_sink_pending_events") == 2
    # request-0's response comes too late; request-2's pairs.
    assert counter.receive(*_event("canary_response", ce_id="request-0")) is None
    assert counter.receive(*_event("canary_response", ce_id="request-2")) is not None
    assert _metric(counter, "mlops_sink_unpaired_total", reason="evicted") == 0


def test_the_bodies_waiting_are_bounded_in_bytes_oldest_counted_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers, body = _event("canary_request")
    monkeypatch.setattr(payload_counts, "MAX_PENDING_BYTES", 2 * len(body) + 10)
    counter = _counter()
    counter.receive(*_event("canary_response", ce_id="response-first"))
    for n in range(3):
        counter.receive({**headers, "ce-id": f"request-{n}"}, body)
    assert _metric(counter, "mlops_sink_pending_bytes") <= 2 * len(body) + 10
    # The response waiting longest went first (counted unpaired), then request-0 (a 5xx).
    assert _metric(counter, "mlops_sink_unpaired_total", reason="evicted") == 1
    assert _counts(counter, "v2").errors_5xx == 1


def test_a_response_whose_request_never_comes_is_dropped_and_counted_as_unpaired() -> None:
    clock = Clock()
    counter = _counter(clock)
    counter.receive(*_event("canary_response"))
    clock.now += payload_counts.RESPONSE_TIMEOUT_S + 1
    assert _counts(counter, "v2").requests == 0
    assert _metric(counter, "mlops_sink_unpaired_total", reason="timeout") == 1


def test_one_id_answered_by_two_versions_is_two_pairs_each_credited_to_its_own_version() -> None:
    counter = _counter()
    shared = "same-client-id"
    # Interleaved as 5 workers may deliver them: canary request, stable request and response,
    # canary response.
    for name in ("canary_request", "stable_request", "stable_response", "canary_response"):
        counter.receive(*_event(name, ce_id=shared))
    stable, canary = _counts(counter, "v1"), _counts(counter, "v2")
    assert (stable.requests, canary.requests) == (1, 1)
    assert stable.classes == {"0": 1, "1": 1, "2": 1}  # version 1's answer
    assert canary.classes == {"0": 1, "2": 2}  # version 2's answer


def test_a_second_event_of_one_kind_and_id_is_refused_and_the_first_kept() -> None:
    counter = _counter()
    counter.receive(*_event("canary_request"))
    forged_headers, _ = _event("canary_request")
    with pytest.raises(DuplicateEvent, match="ce-id '9a3c1e7d-.*' was already received"):
        counter.receive(forged_headers, b'{"inputs": [{"shape": [1, 4], "data": [9, 9, 9, 9]}]}')
    assert counter.receive(*_event("canary_response")) is not None
    # A replay of a pair already counted is refused too, and not counted again.
    with pytest.raises(DuplicateEvent):
        counter.receive(*_event("canary_request"))
    with pytest.raises(DuplicateEvent):
        counter.receive(*_event("canary_response"))
    assert _counts(counter, "v2").requests == 1
    assert _metric(counter, "mlops_sink_refused_total", reason="duplicate") == 3


@pytest.mark.parametrize(
    "name",
    [
        "mlflow.kubeflow-user.svc:5000/api/2.0/mlflow/registered-models/delete?x=",
        "iris@evil.example.com",
        "Iris",
        "9iris",
        "a" * 47,  # latest-<47>-predictor is longer than a DNS label
        "",
    ],
)
def test_a_model_name_that_is_not_a_dns_label_is_refused_before_any_url_is_built(
    name: str,
) -> None:
    counter = _counter()
    with pytest.raises(ValueError, match="ce-inferenceservicename .* DNS-1035 label"):
        counter.receive(*_event("canary_request", ce_inferenceservicename=name))
    assert counter.newest == {}
    assert _metric(counter, "mlops_sink_refused_total", reason="invalid") == 1


def test_events_from_another_namespace_are_refused_naming_the_sinks() -> None:
    counter = _counter(namespace="kubeflow-user")
    counter.receive(*_event("canary_request"))
    with pytest.raises(ValueError, match="ce-namespace must be 'kubeflow-user'"):
        counter.receive(*_event("canary_request", ce_namespace="other", ce_id="x"))


@pytest.mark.parametrize(
    ("uri", "revision", "version"),
    [
        ("s3://models/iris/12", "v12", "12"),
        ("s3://models/iris/latest", "none", ""),
        ("s3://models/iris/" + "9" * 40, "none", ""),
        ("s3://models/iris/١٢", "none", ""),  # Arabic-Indic digits: isdigit, not a version
    ],
)
def test_the_version_label_is_a_short_decimal_taken_from_the_storage_uri(
    uri: str, revision: str, version: str
) -> None:
    counter = _counter()
    annotations = json.dumps({payload_sink.STORAGE_URI_ANNOTATION: uri})
    counter.receive(*_event("canary_request", ce_annotations=annotations))
    counter.receive(*_event("canary_response", ce_annotations=annotations))
    assert _counts(counter, revision).model_version == version
    assert _counts(counter, revision).requests == 1


def test_a_newer_version_past_the_version_limit_replaces_the_oldest_versions_series(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(payload_counts, "MAX_VERSIONS", 2)
    counter = _counter()
    for version in (1, 2, 3):
        annotations = json.dumps({payload_sink.STORAGE_URI_ANNOTATION: f"s3://m/iris/{version}"})
        counter.receive(*_event("canary_request", ce_annotations=annotations))
        counter.receive(*_event("canary_response", ce_annotations=annotations))
    exposition = parse_exposition(payload_sink.generate_latest(counter.registry).decode(), "iris")
    assert sorted(exposition.revisions) == ["v2", "v3"]
    old = json.dumps({payload_sink.STORAGE_URI_ANNOTATION: "s3://m/iris/1"})
    with pytest.raises(ValueError, match="version 1 is older than the 2 versions of iris"):
        counter.receive(*_event("canary_request", ce_annotations=old, ce_id="late"))


def test_models_past_the_model_limit_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(payload_counts, "MAX_MODELS", 2)
    counter = _counter()
    counter.receive(*_event("canary_request", ce_inferenceservicename="a"))
    counter.receive(*_event("canary_request", ce_inferenceservicename="b"))
    with pytest.raises(ValueError, match="more than 2 models"):
        counter.receive(*_event("canary_request", ce_inferenceservicename="c"))


def test_a_body_over_the_limit_is_refused_and_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(payload_counts, "MAX_BODY_BYTES", 100)
    counter = _counter()
    headers, body = _event("canary_request")
    with pytest.raises(ValueError, match="more than 100 bytes"):
        counter.receive(headers, body + b" " * 100)
    assert _metric(counter, "mlops_sink_pending_bytes") == 0
    assert _metric(counter, "mlops_sink_refused_total", reason="too_large") == 1


def test_a_failed_store_read_is_tried_again_after_a_while_not_cached_for_ever() -> None:
    from serving.payload_references import RETRY_S, Reference

    clock, reads = Clock(), []

    def flaky(uri: str) -> Reference | None:
        reads.append(uri)
        if len(reads) == 1:
            return None  # the store is down at the first event
        return Reference(frozenset({"0", "1", "2"}), ("a", "b", "c", "d"), ())

    counter = PayloadCounter(references=flaky, clock=clock)
    counter.receive(*_event("canary_request", ce_id="first"))
    counter.receive(*_event("canary_request", ce_id="second"))
    assert len(reads) == 1  # not read again at once
    clock.now += RETRY_S
    counter.receive(*_event("canary_request", ce_id="third"))
    assert len(reads) == 2
    assert counter.references.get("s3://models/iris/2") is not None


def test_references_are_read_only_from_the_sinks_store(tmp_path: Path) -> None:
    from serving.payload_references import store_reader

    version = tmp_path / "store" / "iris" / "2"
    version.mkdir(parents=True)
    (version / "metadata.json").write_text(json.dumps({"classes": [0, 1, 2]}))
    read = store_reader(str(tmp_path / "store"))
    assert read(str(version)) is not None
    assert store_reader(str(tmp_path / "other"))(str(version)) is None


@pytest.mark.parametrize(
    "at",
    # Go's RFC3339Nano drops trailing zeros, and the fraction when it is zero.
    ["2026-11-23T22:00:01Z", "2026-11-23T22:00:01.2Z", "2026-11-23T22:00:01.200456789Z"],
)
def test_go_rfc3339_nano_times_are_read(at: str) -> None:
    counter = _counter()
    counter.receive(*_event("canary_request", ce_time="2026-11-23T22:00:00.9Z"))
    counter.receive(*_event("canary_response", ce_time=at))
    assert _counts(counter, "v2").requests == 1


def test_a_time_without_its_utc_offset_is_refused() -> None:
    with pytest.raises(ValueError, match="ce-time must name its UTC offset"):
        _counter().receive(*_event("canary_request", ce_time="2026-11-23T22:00:01"))


def test_events_waiting_when_their_versions_series_are_replaced_do_not_bring_them_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(payload_counts, "MAX_VERSIONS", 2)
    clock = Clock()
    counter = _counter(clock)

    def annotated(version: int) -> str:
        return json.dumps({payload_sink.STORAGE_URI_ANNOTATION: f"s3://m/iris/{version}"})

    counter.receive(*_event("canary_request", ce_annotations=annotated(1), ce_id="waits"))
    for version in (2, 3):
        counter.receive(*_event("canary_request", ce_annotations=annotated(version)))
    clock.now += 60
    counter.expire()
    exposition = parse_exposition(payload_sink.generate_latest(counter.registry).decode(), "iris")
    assert sorted(exposition.revisions) == ["v2", "v3"]
