"""The canary router in process: routes, refresh on state changes, failed revisions."""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kserve.protocol.infer_type import InferInput, InferRequest

from serving import local_controller
from serving.model import Revision, RevisionModel
from serving.runtime import (
    CanaryRouter,
    RevisionUnavailable,
    Route,
    Routes,
    VersionNotFound,
    pinned_version,
    retry_delay_s,
)
from tests.integration.serving_helpers import NAME, deploy, fit, publish


def route(version: str, tag: str, percent: int) -> Route:
    revision = Revision(f"{NAME}-predictor-0000{version}", f"/store/{version}", version)
    return Route(RevisionModel(NAME, revision), tag, percent)


def test_routes_split_by_percent_and_find_by_version_revision_or_tag() -> None:
    routes = Routes((route("2", "latest", 10), route("1", "prev", 90)))
    draws = random.Random(0)
    picks = [routes.pick(draws.random()) for _ in range(10_000)]
    share = sum(p is routes.routes[0] for p in picks) / len(picks)
    assert 0.09 < share < 0.11
    assert routes.find("1") is routes.routes[1]
    assert routes.find("latest") is routes.routes[0]
    assert routes.find(f"{NAME}-predictor-00001") is routes.routes[1]
    assert routes.find("3") is None
    assert routes.describe() == "2 (latest, 10%), 1 (prev, 90%)"


def test_a_zero_percent_route_is_reachable_only_by_version() -> None:
    routes = Routes((route("2", "latest", 0), route("1", "prev", 100)))
    assert {routes.pick(d / 10).model.revision.model_version for d in range(10)} == {"1"}  # type: ignore[union-attr]
    assert routes.find("2") is routes.routes[0]
    assert not Routes((route("2", "latest", 0),)).serving


def request(rows: np.ndarray) -> InferRequest:
    tensor = InferInput("input-0", list(rows.shape), "FP64", data=rows.ravel().tolist())
    return InferRequest(NAME, [tensor])


@pytest.fixture
def two_versions(tmp_path: Path, breast_cancer: pd.DataFrame) -> tuple[Path, dict[str, object]]:
    home = tmp_path / ".mlops"
    models = {"1": fit(breast_cancer, 1.0), "2": fit(breast_cancer, 0.001)}
    for model in models.values():
        version, uri = publish(home, model, breast_cancer, tmp_path)
        deploy(home, version, uri, canary=10)
    return home, models


def test_the_router_follows_promote_and_rollback_in_the_state(
    two_versions: tuple[Path, dict[str, object]], breast_cancer: pd.DataFrame
) -> None:
    home, _ = two_versions
    router = CanaryRouter(NAME, home)
    assert router.load() and router.ready
    assert [(r.model.revision.model_version, r.percent) for r in router.routes.routes] == [
        ("2", 10),
        ("1", 90),
    ]
    assert not router.refresh()  # nothing changed
    local_controller.set_canary_percent(NAME, None, home)
    assert router.refresh()
    assert [(r.model.revision.model_version, r.percent) for r in router.routes.routes] == [
        ("2", 100)
    ]
    local_controller.set_canary_percent(NAME, 0, home)
    router.refresh()
    rows = breast_cancer.drop(columns=["target"]).to_numpy()[:3]
    headers: dict[str, str] = {}
    response = router.predict(request(rows), response_headers=headers)
    assert response.model_version == "1"  # type: ignore[union-attr]
    assert headers["x-mlops-model-version"] == "1"
    with pinned_version("latest"):
        assert router.predict(request(rows)).model_version == "2"  # type: ignore[union-attr]
    with pinned_version("9"), pytest.raises(VersionNotFound, match="no live version '9'"):
        router.predict(request(rows))


def test_a_canary_that_fails_to_load_keeps_its_share_and_answers_503(
    two_versions: tuple[Path, dict[str, object]], breast_cancer: pd.DataFrame
) -> None:
    home, _ = two_versions
    state = local_controller.read_state(NAME, home)
    canary = state["revisions"][f"{NAME}-predictor-00002"]["storageUri"]
    (Path(canary.removeprefix("file://")) / "model.joblib").write_bytes(b"tampered")
    router = CanaryRouter(NAME, home)
    assert router.load()  # version 1 serves its 90%
    assert [(r.model.revision.model_version, r.percent, bool(r.failure)) for r in
            router.routes.routes] == [("2", 10, True), ("1", 90, False)]  # fmt: skip
    state = local_controller.read_state(NAME, home)
    assert "sha256" in state["revisions"][f"{NAME}-predictor-00002"]["failed"]["reason"]
    rows = breast_cancer.drop(columns=["target"]).to_numpy()[:3]
    with pinned_version("2"), pytest.raises(RevisionUnavailable) as caught:
        router.predict(request(rows))
    assert f"Revision '{NAME}-predictor-00002'" in str(caught.value)
    assert "sha256" in str(caught.value) and caught.value.retry_after_s >= 1
    with pinned_version("1"):
        assert router.predict(request(rows)).model_version == "1"  # type: ignore[union-attr]


def test_record_server_points_the_status_urls_at_the_local_server(
    two_versions: tuple[Path, dict[str, object]],
) -> None:
    home, _ = two_versions
    isvc = local_controller.record_server(NAME, "http://127.0.0.1:9999", home)
    assert isvc["status"]["url"] == "http://127.0.0.1:9999"
    urls = [t["url"] for t in isvc["status"]["components"]["predictor"]["traffic"]]
    assert urls == [
        f"http://127.0.0.1:9999/v2/models/{NAME}/versions/latest",
        f"http://127.0.0.1:9999/v2/models/{NAME}/versions/prev",
    ]
    # A later reconcile keeps the server's address.
    isvc = local_controller.set_canary_percent(NAME, 50, home)
    assert isvc["status"]["url"] == "http://127.0.0.1:9999"


def test_failed_loads_are_retried_one_second_apart_doubling_up_to_a_minute() -> None:
    assert [retry_delay_s(n) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert retry_delay_s(10_000) == 60


def test_a_champion_that_fails_to_load_keeps_its_traffic_until_a_retry_loads_it(
    two_versions: tuple[Path, dict[str, object]], breast_cancer: pd.DataFrame
) -> None:
    home, _ = two_versions
    champion = f"{NAME}-predictor-00001"
    state = local_controller.read_state(NAME, home)
    model_file = Path(state["revisions"][champion]["storageUri"].removeprefix("file://"))
    good = (model_file / "model.joblib").read_bytes()
    (model_file / "model.joblib").write_bytes(b"tampered")
    router = CanaryRouter(NAME, home)
    router.load()
    assert [(r.model.revision.model_version, r.percent, bool(r.failure)) for r in
            router.routes.routes] == [("2", 10, False), ("1", 90, True)]  # fmt: skip
    predictor = local_controller.read_state(NAME, home)["inferenceService"]["status"]
    assert predictor["components"]["predictor"]["latestRolledoutRevision"] == champion
    (ready,) = predictor["conditions"]
    assert ready["status"] == "False" and champion in ready["message"]
    assert router._failures[champion].attempts == 1
    (model_file / "model.joblib").write_bytes(good)
    failure = router._failures[champion]
    router._failures[champion] = dataclasses.replace(failure, retry_at=0.0)
    assert router.retry_due()
    assert router.refresh(force=router.retry_due())
    assert [bool(r.failure) for r in router.routes.routes] == [False, False]
    state = local_controller.read_state(NAME, home)
    assert "failed" not in state["revisions"][champion]
    (ready,) = state["inferenceService"]["status"]["conditions"]
    assert ready["status"] == "True" and "message" not in ready
    rows = breast_cancer.drop(columns=["target"]).to_numpy()[:3]
    with pinned_version("1"):
        assert router.predict(request(rows)).model_version == "1"  # type: ignore[union-attr]


def test_a_failure_recorded_by_an_earlier_server_is_cleared_when_the_revision_loads(
    two_versions: tuple[Path, dict[str, object]],
) -> None:
    home, _ = two_versions
    champion = f"{NAME}-predictor-00001"
    local_controller.mark_revision_failed(NAME, champion, "StoreError: no S3 credentials", home)
    router = CanaryRouter(NAME, home)
    assert router.load()
    state = local_controller.read_state(NAME, home)
    assert "failed" not in state["revisions"][champion]
    assert state["inferenceService"]["status"]["conditions"][0]["status"] == "True"
    assert [r.percent for r in router.routes.routes] == [10, 90]


def test_a_failed_load_is_not_retried_before_its_time(
    two_versions: tuple[Path, dict[str, object]],
) -> None:
    home, _ = two_versions
    canary = f"{NAME}-predictor-00002"
    state = local_controller.read_state(NAME, home)
    model_file = Path(state["revisions"][canary]["storageUri"].removeprefix("file://"))
    (model_file / "model.joblib").write_bytes(b"tampered")
    router = CanaryRouter(NAME, home)
    router.load()
    failure = router._failures[canary]
    # Its next try an hour away, whatever the speed of this machine.
    router._failures[canary] = dataclasses.replace(failure, retry_at=time.monotonic() + 3600)
    attempts = failure.attempts
    assert not router.retry_due()
    local_controller.set_canary_percent(NAME, 20, home)  # a state change, not a retry
    assert router.refresh()
    assert router._failures[canary].attempts == attempts
    assert [(r.percent, bool(r.failure)) for r in router.routes.routes] == [(20, True), (80, False)]


def test_a_corrupt_state_file_leaves_the_router_serving_as_before(
    two_versions: tuple[Path, dict[str, object]],
) -> None:
    home, _ = two_versions
    router = CanaryRouter(NAME, home)
    router.load()
    before = router.routes
    local_controller.state_path(NAME, home).write_text("- not a state\n")
    with pytest.raises(local_controller.StateFileError, match="delete it and deploy again"):
        router.refresh()
    assert router.routes is before and router.ready
