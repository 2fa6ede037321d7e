"""The local controller gives canaryTrafficPercent the meaning KServe's Knative mode gives it."""

from pathlib import Path

import pytest

from serving import local_controller
from serving.inference_service import PredictorSettings, build_inference_service


def _deploy(state: Path, version: int, canary: int | None = None) -> dict:
    settings = PredictorSettings(name="m", storage_uri=f"/store/m/{version}",
                                 model_version=version, canary_traffic_percent=canary)
    return local_controller.apply(build_inference_service(settings), state)


def _split(isvc: dict) -> dict[str, int]:
    traffic = isvc["status"]["components"]["predictor"]["traffic"]
    return {t["revisionName"][-5:]: t["percent"] for t in traffic}


def test_first_deploy_takes_all_traffic_and_is_rolled_out(tmp_path: Path) -> None:
    isvc = _deploy(tmp_path, 1)
    predictor = isvc["status"]["components"]["predictor"]
    assert _split(isvc) == {"00001": 100}
    assert predictor["latestRolledoutRevision"] == "m-predictor-00001"


def test_second_deploy_with_canary_splits_traffic(tmp_path: Path) -> None:
    _deploy(tmp_path, 1)
    isvc = _deploy(tmp_path, 2, canary=10)
    assert _split(isvc) == {"00002": 10, "00001": 90}
    targets = local_controller.traffic_targets(local_controller.read_state("m", tmp_path))
    assert [(t.tag, t.model_version, t.storage_uri) for t in targets] == [
        ("latest", "2", "/store/m/2"), ("prev", "1", "/store/m/1")]


def test_promote_then_rollback_returns_to_the_previous_revision(tmp_path: Path) -> None:
    _deploy(tmp_path, 1)
    _deploy(tmp_path, 2, canary=10)
    promoted = local_controller.set_canary_percent("m", None, tmp_path)
    assert _split(promoted) == {"00002": 100}
    predictor = promoted["status"]["components"]["predictor"]
    assert predictor["previousRolledoutRevision"] == "m-predictor-00001"
    rolled_back = local_controller.set_canary_percent("m", 0, tmp_path)
    assert _split(rolled_back) == {"00002": 0, "00001": 100}


def test_rollback_during_canary_pins_the_previous_revision(tmp_path: Path) -> None:
    _deploy(tmp_path, 1)
    _deploy(tmp_path, 2, canary=10)
    assert _split(local_controller.set_canary_percent("m", 0, tmp_path)) == {
        "00002": 0, "00001": 100}


def test_changing_only_the_percent_creates_no_revision(tmp_path: Path) -> None:
    _deploy(tmp_path, 1)
    _deploy(tmp_path, 2, canary=10)
    isvc = local_controller.set_canary_percent("m", 50, tmp_path)
    assert isvc["status"]["components"]["predictor"]["latestCreatedRevision"] == "m-predictor-00002"
    assert isvc["metadata"]["generation"] == 3


def test_reading_an_undeployed_service_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(local_controller.NotDeployedError, match="run `mlops run` first"):
        local_controller.read_state("nope", tmp_path)
