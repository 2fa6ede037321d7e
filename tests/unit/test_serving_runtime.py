"""The canary router in process: routes, refresh on state changes, failed revisions."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kserve.protocol.infer_type import InferInput, InferRequest

from serving import local_controller
from serving.model import Revision, RevisionModel
from serving.runtime import CanaryRouter, Route, Routes, VersionNotFound, pinned_version
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


def test_a_revision_that_fails_to_load_is_marked_failed_and_gets_no_traffic(
    two_versions: tuple[Path, dict[str, object]],
) -> None:
    home, _ = two_versions
    state = local_controller.read_state(NAME, home)
    canary = state["revisions"][f"{NAME}-predictor-00002"]["storageUri"]
    (Path(canary.removeprefix("file://")) / "model.joblib").write_bytes(b"tampered")
    router = CanaryRouter(NAME, home)
    router.load()
    assert [r.model.revision.model_version for r in router.routes.routes] == ["1"]
    assert router.routes.routes[0].percent == 100
    state = local_controller.read_state(NAME, home)
    assert "sha256" in state["revisions"][f"{NAME}-predictor-00002"]["failed"]["reason"]


def test_a_failed_canary_stays_out_of_traffic_through_promote_and_rollback(
    two_versions: tuple[Path, dict[str, object]],
) -> None:
    home, _ = two_versions
    latest = f"{NAME}-predictor-00002"
    isvc = local_controller.mark_revision_failed(NAME, latest, "StoreError: bad file", home)
    predictor = isvc["status"]["components"]["predictor"]
    assert [(t["revisionName"], t["percent"]) for t in predictor["traffic"]] == [
        (f"{NAME}-predictor-00001", 100)
    ]
    assert predictor["latestReadyRevision"] == f"{NAME}-predictor-00001"
    assert predictor["latestCreatedRevision"] == latest
    (ready,) = isvc["status"]["conditions"]
    assert ready["status"] == "False" and ready["reason"] == "RevisionFailed"
    assert "StoreError: bad file" in ready["message"]
    promoted = local_controller.set_canary_percent(NAME, None, home)
    traffic = promoted["status"]["components"]["predictor"]["traffic"]
    assert [(t["revisionName"], t["percent"]) for t in traffic] == [
        (f"{NAME}-predictor-00001", 100)
    ]
    # Never rolled out: the failed revision did not take all traffic.
    assert promoted["status"]["components"]["predictor"]["latestRolledoutRevision"] == (
        f"{NAME}-predictor-00001"
    )


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
