"""The kubernetes deploy target: the real ``KServeClient`` against a fake Kubernetes API.

The fake (``kserve_status_fake``) serves InferenceServices over HTTP on loopback and runs
KServe's and Knative's status logic behind them, so these tests see what the cluster would show
between polls, including the two cases where ``status.observedGeneration`` misleads.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serving import kubernetes_lease, kubernetes_target
from serving.deploy import (
    ServingVersions,
    deploy_inference_service,
    deployed_versions,
    set_canary_traffic,
)
from serving.inference_service import (
    MODEL_VERSION_LABEL,
    PredictorSettings,
    build_inference_service,
)
from tests.unit.kserve_status_fake import (
    SOURCE_URI_ANNOTATION,
    FakeCluster,
    Fault,
    serve,
    write_kubeconfig,
)

NS = "kubeflow-user"
NAME = "breast-cancer"


def _point_kubeconfig_at(url: str, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(url, directory / "kubeconfig")))


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCluster]:
    found = FakeCluster()
    monkeypatch.setattr(kubernetes_target, "POLL_INTERVAL_S", 0.01)
    with serve(found) as url:
        _point_kubeconfig_at(url, tmp_path, monkeypatch)
        yield found


def _settings(version: int, percent: int | None = 10) -> PredictorSettings:
    return PredictorSettings(
        name=NAME,
        namespace=NS,
        storage_uri=_uri(version),
        model_version=version,
        canary_traffic_percent=percent,
        service_account="kserve-minio-sa",
    )


def _uri(version: int) -> str:
    return f"s3://models/breast-cancer/{version}/"


def _deploy(version: int, tmp_path: Path, timeout_s: int = 30, percent: int = 10) -> dict[str, Any]:
    settings = _settings(version, percent)
    return deploy_inference_service(settings, "kubernetes", tmp_path, timeout_s)


def _traffic(isvc: dict[str, Any]) -> list[tuple[bool, str, int]]:
    """(latestRevision, revision, percent) of each target, as ``kubectl get isvc`` reads them."""
    traffic = isvc["status"]["components"]["predictor"]["traffic"]
    return sorted((t["latestRevision"], t["revisionName"], t["percent"]) for t in traffic)


def _rev(number: int) -> str:
    return f"{NAME}-predictor-{number:05d}"


def _returned_at_first_settled_read(cluster: FakeCluster) -> None:
    """The wait read until the rollout was done, and stopped at the first read showing it."""
    reads = cluster.reads_after_last_write()
    assert reads[-1] is True
    assert not any(reads[:-1])


def _stored(cluster: FakeCluster) -> dict[str, Any]:
    return cluster.objects[(NS, NAME)]


def test_first_deploy_creates_the_inference_service_with_all_traffic(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    applied = _deploy(1, tmp_path)

    assert cluster.methods().count("POST") == 1
    predictor = _stored(cluster)["spec"]["predictor"]
    assert "canaryTrafficPercent" not in predictor
    assert predictor["serviceAccountName"] == "kserve-minio-sa"
    assert _traffic(applied) == [(True, _rev(1), 100)]
    _returned_at_first_settled_read(cluster)


def test_second_deploy_waits_for_its_own_revision_at_the_canary_percent(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    _deploy(1, tmp_path)
    applied = _deploy(2, tmp_path)

    assert "PUT" in cluster.methods()
    assert _stored(cluster)["spec"]["predictor"]["model"]["storageUri"] == _uri(2)
    assert _traffic(applied) == [(False, _rev(1), 90), (True, _rev(2), 10)]
    assert applied["status"]["components"]["predictor"]["latestReadyRevision"] == _rev(2)
    _returned_at_first_settled_read(cluster)


def test_promote_removes_the_canary_field_and_waits_for_all_traffic(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    _deploy(1, tmp_path)
    _deploy(2, tmp_path)

    applied = set_canary_traffic(NAME, None, "kubernetes", state_dir=tmp_path, namespace=NS)

    assert "canaryTrafficPercent" not in _stored(cluster)["spec"]["predictor"]
    assert _traffic(applied) == [(True, _rev(2), 100)]
    assert applied["status"]["components"]["predictor"]["latestRolledoutRevision"] == _rev(2)
    _returned_at_first_settled_read(cluster)


def test_rollback_of_a_canary_gives_the_previous_revision_everything(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    _deploy(1, tmp_path)
    _deploy(2, tmp_path)

    applied = set_canary_traffic(NAME, 0, "kubernetes", state_dir=tmp_path, namespace=NS)

    assert _stored(cluster)["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert _traffic(applied) == [(False, _rev(1), 100), (True, _rev(2), 0)]
    _returned_at_first_settled_read(cluster)


def test_rollback_after_a_full_rollout_waits_until_kserve_repoints_prev(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    _deploy(1, tmp_path)
    _deploy(2, tmp_path)
    kubernetes_target.set_canary_percent(NAME, NS, None, timeout_s=30)

    applied = kubernetes_target.set_canary_percent(NAME, NS, 0, timeout_s=30)

    # KServe first sends 100% to the rolled-out revision (the latest itself), then re-points
    # latestRolledoutRevision at revision 1 and updates the Knative Service once more.
    assert _traffic(applied) == [(False, _rev(1), 100), (True, _rev(2), 0)]
    _returned_at_first_settled_read(cluster)
    assert applied["status"]["observedGeneration"] > applied["metadata"]["generation"]


def test_a_deploy_after_such_a_rollback_waits_for_its_new_revision(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    _deploy(1, tmp_path)
    _deploy(2, tmp_path)
    kubernetes_target.set_canary_percent(NAME, NS, None, timeout_s=30)
    kubernetes_target.set_canary_percent(NAME, NS, 0, timeout_s=30)

    # observedGeneration (the Knative Service's) is already ahead: it proves nothing here.
    applied = _deploy(3, tmp_path)

    assert applied["status"]["components"]["predictor"]["latestReadyRevision"] == _rev(3)
    assert _traffic(applied) == [(False, _rev(1), 90), (True, _rev(3), 10)]
    _returned_at_first_settled_read(cluster)


@pytest.mark.parametrize("percent", [10, 100])
def test_a_deploy_retried_after_a_slow_first_rollout_returns_once_the_revision_is_ready(
    percent: int, cluster: FakeCluster, tmp_path: Path
) -> None:
    cluster.slow_uris[_uri(1)] = 10_000
    with pytest.raises(RuntimeError, match=r"within 1s"):
        _deploy(1, tmp_path, timeout_s=1)
    cluster.start_after(3)

    # The retry sends canaryTrafficPercent, which KServe ignores while nothing has rolled out:
    # the Knative Service does not change for it.
    applied = _deploy(1, tmp_path, percent=percent)

    assert applied["status"]["components"]["predictor"]["latestReadyRevision"] == _rev(1)
    _returned_at_first_settled_read(cluster)
    if percent == 100:
        # Nothing changes the Knative Service any more: its generation, which KServe reports as
        # observedGeneration, stays behind the InferenceService's for good.
        assert _traffic(applied) == [(True, _rev(1), 100)]
        assert applied["status"]["observedGeneration"] < applied["metadata"]["generation"]
    else:
        # Once revision 1 has rolled out, KServe applies the 10% to it on both sides.
        assert _traffic(applied) == [(False, _rev(1), 90), (True, _rev(1), 10)]


def test_a_revision_that_never_becomes_ready_fails_with_its_reason_and_deletes_nothing(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    _deploy(1, tmp_path)
    cluster.failing_uris.add(_uri(2))

    with pytest.raises(RuntimeError, match=r"breast-cancer was not rolled out within 1s") as info:
        _deploy(2, tmp_path, timeout_s=1)

    message = str(info.value)
    assert f"revision {_rev(2)} is not ready" in message
    assert "RevisionFailed" in message and "model.joblib did not load" in message
    assert "\n" not in message
    assert "DELETE" not in cluster.methods()
    served = cluster.predictor_status(NAME, NS)["traffic"]
    assert {t["revisionName"] for t in served} == {_rev(1)}


def test_get_of_a_missing_inference_service_names_it(cluster: FakeCluster) -> None:
    with pytest.raises(LookupError, match=r"'breast-cancer' not found in namespace 'kubeflow-user"):
        kubernetes_target.get(NAME, NS)
    assert kubernetes_target.exists(NAME, NS) is False


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("failure", ["forbidden", "server error", "no answer"])
def test_a_failed_lookup_of_an_existing_service_fails_the_deploy_and_creates_nothing(
    failure: str, cluster: FakeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _deploy(1, tmp_path)
    before = len(cluster.log)
    monkeypatch.setattr(kubernetes_target, "BACKOFF_FACTOR_S", 0.0)
    if failure == "forbidden":
        expected = "get is forbidden for pipeline-runner"
        cluster.faults.append(Fault("GET", 403, "Forbidden", expected))
    elif failure == "server error":
        cluster.faults += [Fault("GET", 500)] * (kubernetes_target.RETRIES + 1)
        expected = "injected failure"
    else:
        _point_kubeconfig_at(f"http://127.0.0.1:{_closed_port()}", tmp_path, monkeypatch)
        expected = "did not answer after 5 retries"

    with pytest.raises(RuntimeError) as info:
        _deploy(2, tmp_path)

    message = str(info.value)
    assert message.startswith(f"could not read InferenceService {NS}/{NAME}: ")
    assert expected in message and "\n" not in message
    assert [m for m, _ in cluster.log[before:]] == ["GET"] * len(cluster.log[before:])
    if failure == "server error":  # retried by the client, then given up
        assert len(cluster.log[before:]) == kubernetes_target.RETRIES + 1


def test_transient_api_errors_are_retried_by_the_client(
    cluster: FakeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kubernetes_target, "BACKOFF_FACTOR_S", 0.0)
    cluster.faults += [Fault("GET", 503), Fault("POST", 429, "TooManyRequests")]
    _deploy(1, tmp_path)
    cluster.faults += [Fault("GET", 502), Fault("PUT", 500), Fault("GET", 504)]

    applied = _deploy(2, tmp_path)

    assert _traffic(applied) == [(False, _rev(1), 90), (True, _rev(2), 10)]
    assert cluster.faults == []
    assert cluster.methods().count("POST") == 2  # the refused one and its retry


def test_a_create_whose_answer_was_lost_finds_its_own_object(
    cluster: FakeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kubernetes_target, "BACKOFF_FACTOR_S", 0.0)
    cluster.faults.append(Fault("POST", 504, "Timeout", "the answer was lost", processed=True))

    applied = _deploy(1, tmp_path)

    assert cluster.methods().count("POST") == 2  # the retry got 409 AlreadyExists
    assert _traffic(applied) == [(True, _rev(1), 100)]


def test_a_create_that_finds_another_object_fails(cluster: FakeCluster, tmp_path: Path) -> None:
    _deploy(1, tmp_path)
    # Someone else's object under the name: the first-deploy create must not take it over.
    isvc = build_inference_service(_settings(2, None))
    with pytest.raises(RuntimeError, match="could not create .*already exists"):
        kubernetes_target.apply(isvc, timeout_s=30, create=True)
    assert _stored(cluster)["spec"]["predictor"]["model"]["storageUri"] == _uri(1)


def test_a_replace_refused_by_a_concurrent_change_is_redone_on_a_fresh_read(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    _deploy(1, tmp_path)
    cluster.faults.append(Fault("PUT", 409, "Conflict", "the object has been modified"))

    applied = _deploy(2, tmp_path)

    assert _traffic(applied) == [(False, _rev(1), 90), (True, _rev(2), 10)]
    writes = [i for i, m in enumerate(cluster.methods()) if m == "PUT"]
    assert len(writes) == 2 and "GET" in cluster.methods()[writes[0] : writes[1]]


@pytest.mark.parametrize(
    ("method", "status", "reason"),
    [("POST", 403, "Forbidden"), ("POST", 422, "Invalid"), ("PUT", 400, "BadRequest")],
)
def test_a_deterministic_api_refusal_is_not_retried_and_says_why_in_one_line(
    method: str, status: int, reason: str, cluster: FakeCluster, tmp_path: Path
) -> None:
    if method == "PUT":
        _deploy(1, tmp_path)
    message = 'User "system:serviceaccount:kubeflow:pipeline-runner" cannot do this'
    cluster.faults.append(Fault(method, status, reason, message))

    with pytest.raises(RuntimeError) as info:
        _deploy(1 if method == "POST" else 2, tmp_path)

    verb = "create" if method == "POST" else "replace"
    assert str(info.value) == f"could not {verb} InferenceService {NS}/{NAME}: {message}"
    assert cluster.methods().count(method) == 1


def test_a_canary_percent_outside_the_range_is_refused_before_any_call(
    cluster: FakeCluster,
) -> None:
    with pytest.raises(ValueError, match="within 0..100"):
        kubernetes_target.set_canary_percent(NAME, NS, 101, timeout_s=30)
    assert cluster.log == []


SOURCE_URI = SOURCE_URI_ANNOTATION


def _promoted_then_rolled_back(tmp_path: Path) -> None:
    _deploy(1, tmp_path)
    _deploy(2, tmp_path)
    kubernetes_target.set_canary_percent(NAME, NS, None, timeout_s=30)
    kubernetes_target.set_canary_percent(NAME, NS, 0, timeout_s=30)


def test_after_promote_then_rollback_the_stable_version_is_the_prev_revisions(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    _promoted_then_rolled_back(tmp_path)

    # The InferenceService's own label says 2; revision 1 takes all traffic and serves 1.
    assert _stored(cluster)["metadata"]["labels"][MODEL_VERSION_LABEL] == "2"
    served = deployed_versions(NAME, "kubernetes", state_dir=tmp_path, namespace=NS)
    assert served == ServingVersions(stable="1", canary=None)
    assert "GET revisions" in cluster.methods()


def test_the_versions_come_from_the_revisions_that_knative_made_from_kserves_template(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    _deploy(1, tmp_path)
    _deploy(2, tmp_path)

    versions = kubernetes_target.revision_versions(NS, [_rev(1), _rev(2), _rev(1)])

    assert versions == {_rev(1): "1", _rev(2): "2"}
    assert cluster.methods().count("GET revisions") == 2


def test_a_revision_without_the_version_label_is_read_by_its_storage_uri(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    # A cluster whose inferenceservice-config holds the label back from the revisions.
    cluster.labels_held_back = (MODEL_VERSION_LABEL,)
    _deploy(1, tmp_path)
    _deploy(2, tmp_path)

    assert kubernetes_target.revision_versions(NS, [_rev(1), _rev(2)]) == {
        _rev(1): "1",
        _rev(2): "2",
    }


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"labels": {MODEL_VERSION_LABEL: "7"}, "annotations": {SOURCE_URI: _uri(3)}}, "7"),
        ({"labels": {MODEL_VERSION_LABEL: "x"}, "annotations": {SOURCE_URI: _uri(3)}}, "3"),
        ({"annotations": {SOURCE_URI: "s3://models/breast-cancer/latest/"}}, None),
        ({}, None),
    ],
)
def test_a_revisions_version_is_its_label_else_its_storage_uri_else_unknown(
    metadata: dict[str, Any], expected: str | None
) -> None:
    assert kubernetes_target.version_of_revision({"metadata": metadata}) == expected


def test_a_revision_that_is_gone_is_unknown_and_the_champion_stays(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    _promoted_then_rolled_back(tmp_path)
    cluster.gone_revisions.add(_rev(1))

    assert kubernetes_target.revision_versions(NS, [_rev(1), _rev(2)]) == {_rev(2): "2"}
    served = deployed_versions(NAME, "kubernetes", state_dir=tmp_path, namespace=NS)
    assert served == ServingVersions(stable=None, canary=None)


def test_a_refused_revision_read_fails_in_one_line(cluster: FakeCluster, tmp_path: Path) -> None:
    _deploy(1, tmp_path)
    message = 'revisions.serving.knative.dev "x" is forbidden: User "pipeline-runner" cannot get'
    cluster.faults.append(Fault("GET", 403, "Forbidden", message, resource="revisions"))

    with pytest.raises(RuntimeError) as info:
        deployed_versions(NAME, "kubernetes", state_dir=tmp_path, namespace=NS)

    assert str(info.value) == f"could not read Knative Revision {NS}/{_rev(1)}: {message}"


def test_a_transient_error_reading_a_revision_is_retried(
    cluster: FakeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kubernetes_target, "BACKOFF_FACTOR_S", 0.0)
    _deploy(1, tmp_path)
    cluster.faults.append(Fault("GET", 503, resource="revisions"))

    assert kubernetes_target.revision_versions(NS, [_rev(1)]) == {_rev(1): "1"}
    assert cluster.faults == []
    assert cluster.methods().count("GET revisions") == 2


def test_a_retried_first_deploy_that_splits_one_revision_has_no_canary(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    cluster.slow_uris[_uri(1)] = 10_000
    with pytest.raises(RuntimeError, match=r"within 1s"):
        _deploy(1, tmp_path, timeout_s=1)
    cluster.start_after(3)
    applied = _deploy(1, tmp_path)
    assert _traffic(applied) == [(False, _rev(1), 90), (True, _rev(1), 10)]

    served = deployed_versions(NAME, "kubernetes", state_dir=tmp_path, namespace=NS)

    assert served == ServingVersions(stable="1", canary=None)


def test_a_rollback_from_a_share_below_100_never_marks_the_canary_rolled_out(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    _deploy(1, tmp_path)
    _deploy(2, tmp_path)
    for share in (25, 50, 99):
        kubernetes_target.set_canary_percent(NAME, NS, share, timeout_s=30)

    rolled_back = kubernetes_target.set_canary_percent(NAME, NS, 0, timeout_s=30)

    assert rolled_back["status"]["components"]["predictor"]["latestRolledoutRevision"] == _rev(1)
    assert _traffic(_deploy(3, tmp_path)) == [(False, _rev(1), 90), (True, _rev(3), 10)]


def test_ready_unknown_is_not_rolled_out() -> None:
    written = {"spec": {"predictor": {"model": {"storageUri": _uri(2)}}}}
    status = {
        "components": {"predictor": {
            "latestCreatedRevision": _rev(2), "latestReadyRevision": _rev(2),
            "latestRolledoutRevision": _rev(2),
            "traffic": [{"latestRevision": True, "revisionName": _rev(2), "percent": 100}]}},
        "conditions": [{"type": "Ready", "status": "Unknown"}],
    }  # fmt: skip
    isvc = {"spec": written["spec"], "status": status}
    assert kubernetes_target.rollout_missing(isvc, written, written) == "Ready is not True"
    status["conditions"] = [{"type": "Ready", "status": "True"}]
    assert kubernetes_target.rollout_missing(isvc, written, written) is None


def test_a_canary_share_set_before_anything_rolled_out_fails_at_once_with_the_reason(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    import time

    cluster.slow_uris[_uri(1)] = 10_000
    with pytest.raises(RuntimeError, match=r"within 1s"):
        _deploy(1, tmp_path, timeout_s=1)
    puts = cluster.methods().count("PUT")
    started = time.monotonic()

    with pytest.raises(RuntimeError, match=r"has no rolled-out revision yet .*ignores") as info:
        kubernetes_target.set_canary_percent(NAME, NS, 10, timeout_s=600)

    assert time.monotonic() - started < 10
    assert "nothing changed" in str(info.value) and "\n" not in str(info.value)
    assert cluster.methods().count("PUT") == puts


def test_a_conditional_write_over_a_humans_change_is_refused_and_writes_nothing(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    from serving.inference_service import TrafficChangedError, TrafficSpec

    _deploy(1, tmp_path)
    _deploy(2, tmp_path)
    kubernetes_target.set_canary_percent(NAME, NS, 0, timeout_s=30)  # a human's rollback
    puts = cluster.methods().count("PUT")

    with pytest.raises(TrafficChangedError, match=r"^stopped by a rollback: canaryTrafficPercent"):
        kubernetes_target.set_canary_percent(NAME, NS, 25, 30, TrafficSpec(10, _uri(2)))

    assert cluster.methods().count("PUT") == puts
    assert _stored(cluster)["spec"]["predictor"]["canaryTrafficPercent"] == 0


def test_a_humans_promote_between_the_rollouts_read_and_write_wins(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    from serving.inference_service import TrafficChangedError, TrafficSpec

    _deploy(1, tmp_path)
    _deploy(2, tmp_path)
    # The human's replace lands after the rollout read: the rollout's replace gets 409 on its
    # resourceVersion, reads again, and finds the promote.
    cluster.writes_first.append(lambda spec: spec["predictor"].pop("canaryTrafficPercent"))

    with pytest.raises(TrafficChangedError, match=r"^stopped by a promote"):
        kubernetes_target.set_canary_percent(NAME, NS, 25, 30, TrafficSpec(10, _uri(2)))

    assert "canaryTrafficPercent" not in _stored(cluster)["spec"]["predictor"]
    # The second deploy's replace, then the refused one and its fresh read: no third replace.
    assert cluster.methods().count("PUT") == 2 and cluster.methods()[-2:] == ["PUT", "GET"]


def test_one_rollout_lease_per_inference_service(cluster: FakeCluster) -> None:
    from serving.inference_service import RolloutLockedError

    kubernetes_lease.acquire_lease(NAME, NS, "rollout-a")
    lease = cluster.leases[(NS, f"{NAME}-rollout")]
    assert lease["spec"]["holderIdentity"] == "rollout-a"
    assert lease["spec"]["leaseDurationSeconds"] == kubernetes_lease.LEASE_DURATION_S

    held = r"Lease breast-cancer-rollout is held by rollout-a"
    with pytest.raises(RolloutLockedError, match=held):
        kubernetes_lease.acquire_lease(NAME, NS, "rollout-b")
    kubernetes_lease.acquire_lease("other-model", NS, "rollout-b")  # one Lease per service

    kubernetes_lease.renew_lease(NAME, NS, "rollout-a")
    with pytest.raises(kubernetes_lease.LeaseLostError, match="held by rollout-a"):
        kubernetes_lease.renew_lease(NAME, NS, "rollout-b")
    kubernetes_lease.release_lease(NAME, NS, "rollout-b")  # not b's: stays
    assert (NS, f"{NAME}-rollout") in cluster.leases
    kubernetes_lease.release_lease(NAME, NS, "rollout-a")
    assert (NS, f"{NAME}-rollout") not in cluster.leases
    kubernetes_lease.acquire_lease(NAME, NS, "rollout-b")


def test_a_lease_whose_holder_stopped_renewing_is_taken_over(cluster: FakeCluster) -> None:
    kubernetes_lease.acquire_lease(NAME, NS, "rollout-a")
    lease = cluster.leases[(NS, f"{NAME}-rollout")]
    lease["spec"]["renewTime"] = "2020-01-01T00:00:00.000000Z"  # its holder died long ago

    kubernetes_lease.acquire_lease(NAME, NS, "rollout-b")

    assert cluster.leases[(NS, f"{NAME}-rollout")]["spec"]["holderIdentity"] == "rollout-b"
    with pytest.raises(kubernetes_lease.LeaseLostError, match="now held by rollout-b"):
        kubernetes_lease.renew_lease(NAME, NS, "rollout-a")
