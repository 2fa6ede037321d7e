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


def test_a_failed_champion_keeps_its_share_and_the_canary_is_not_rolled_out(tmp_path: Path) -> None:
    _deploy(tmp_path, 1)
    _deploy(tmp_path, 2, canary=10)
    isvc = local_controller.mark_revision_failed("m", "m-predictor-00001", "StoreError: gone",
                                                 tmp_path)
    predictor = isvc["status"]["components"]["predictor"]
    assert _split(isvc) == {"00002": 10, "00001": 90}
    assert predictor["latestRolledoutRevision"] == "m-predictor-00001"
    (ready,) = isvc["status"]["conditions"]
    assert ready["status"] == "False"
    assert ready["message"] == "Revision 'm-predictor-00001' failed to load: StoreError: gone"


def test_rollback_to_a_failed_champion_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    _deploy(tmp_path, 1)
    _deploy(tmp_path, 2, canary=10)
    local_controller.mark_revision_failed("m", "m-predictor-00001", "StoreError: gone", tmp_path)
    path = local_controller.state_path("m", tmp_path)
    before = path.read_bytes()
    with pytest.raises(local_controller.RevisionFailedError,
                       match="rollback would send all traffic of 'm' to revision "
                             "'m-predictor-00001', which failed to load"):
        local_controller.set_canary_percent("m", 0, tmp_path)
    assert path.read_bytes() == before
    promoted = local_controller.set_canary_percent("m", None, tmp_path)  # the canary loads: fine
    assert _split(promoted) == {"00002": 100}


def test_promoting_a_failed_canary_is_refused_and_it_is_never_rolled_out(tmp_path: Path) -> None:
    _deploy(tmp_path, 1)
    _deploy(tmp_path, 2, canary=10)
    isvc = local_controller.mark_revision_failed("m", "m-predictor-00002", "StoreError: bad",
                                                 tmp_path)
    assert _split(isvc) == {"00002": 10, "00001": 90}
    for percent in (None, 100):
        with pytest.raises(local_controller.RevisionFailedError, match="'m-predictor-00002'"):
            local_controller.set_canary_percent("m", percent, tmp_path)
    rolled_back = local_controller.set_canary_percent("m", 0, tmp_path)
    assert _split(rolled_back) == {"00002": 0, "00001": 100}
    predictor = rolled_back["status"]["components"]["predictor"]
    assert predictor["latestRolledoutRevision"] == "m-predictor-00001"


def test_clearing_a_failure_makes_the_service_ready_again(tmp_path: Path) -> None:
    _deploy(tmp_path, 1)
    local_controller.mark_revision_failed("m", "m-predictor-00001", "StoreError: gone", tmp_path)
    isvc = local_controller.clear_revision_failure("m", "m-predictor-00001", tmp_path)
    assert isvc["status"]["conditions"][0]["status"] == "True"
    revisions = local_controller.read_state("m", tmp_path)["revisions"]
    assert "failed" not in revisions["m-predictor-00001"]


CORRUPT_STATES = {
    "not-yaml": ("inferenceService: [unclosed", "not YAML"),
    "not-a-mapping": ("- 1\n- 2\n", "the file must be a mapping, found a list"),
    "empty": ("", "the file must be a mapping, found nothing"),
    "no-inference-service": ("revisions: {}\n", "'inferenceService' must be a mapping"),
    "no-revisions": (None, "'revisions' must be a mapping"),
    "no-status": (None, "'inferenceService.status' must be a mapping"),
    "percent-not-a-number": (None, r"traffic\[0\]'.percent must be a whole number, found a str"),
    "unknown-revision": (None, r"traffic\[0\]'.revisionName names no revision"),
    "canary-not-a-number": (None, "'canaryTrafficPercent' must be a whole number, found a str"),
}


def _corrupt(state: dict, case: str) -> None:
    if case == "no-revisions":
        del state["revisions"]
    elif case == "no-status":
        del state["inferenceService"]["status"]
    elif case == "percent-not-a-number":
        traffic = state["inferenceService"]["status"]["components"]["predictor"]["traffic"]
        traffic[0]["percent"] = "x"
    elif case == "canary-not-a-number":
        state["inferenceService"]["spec"]["predictor"]["canaryTrafficPercent"] = "ten"
    elif case == "unknown-revision":
        traffic = state["inferenceService"]["status"]["components"]["predictor"]["traffic"]
        traffic[0]["revisionName"] = "m-predictor-00009"


@pytest.mark.parametrize("case", list(CORRUPT_STATES))
def test_a_corrupt_state_file_gives_one_error_naming_the_file_and_the_fix(
    tmp_path: Path, case: str
) -> None:
    import yaml

    _deploy(tmp_path, 1)
    path = local_controller.state_path("m", tmp_path)
    text, message = CORRUPT_STATES[case]
    if text is None:
        state = yaml.safe_load(path.read_text())
        _corrupt(state, case)
        text = yaml.safe_dump(state)
    path.write_text(text)
    readers = [
        lambda: local_controller.read_state("m", tmp_path),
        lambda: local_controller.set_canary_percent("m", None, tmp_path),
        lambda: local_controller.mark_revision_failed("m", "m-predictor-00001", "x", tmp_path),
        lambda: local_controller.record_server("m", "http://127.0.0.1:1", tmp_path),
        lambda: _deploy(tmp_path, 2, canary=10),
    ]
    for reader in readers:
        with pytest.raises(local_controller.StateFileError, match=message) as caught:
            reader()
        assert str(path) in str(caught.value)
        assert "delete it and deploy again with `mlops run`" in str(caught.value)
        assert isinstance(caught.value, ValueError)
    assert path.read_text() == text  # nothing was written over it


def test_a_deploy_after_promote_then_rollback_splits_with_the_revision_that_serves(
    tmp_path: Path,
) -> None:
    # As KServe's PropagateStatus: the rollback re-points latestRolledoutRevision at revision 1.
    _deploy(tmp_path, 1)
    _deploy(tmp_path, 2, canary=10)
    local_controller.set_canary_percent("m", None, tmp_path)
    rolled_back = local_controller.set_canary_percent("m", 0, tmp_path)
    predictor = rolled_back["status"]["components"]["predictor"]
    assert predictor["latestRolledoutRevision"] == "m-predictor-00001"
    assert _split(_deploy(tmp_path, 3, canary=10)) == {"00003": 10, "00001": 90}


def test_a_canary_rolled_back_from_any_share_below_100_is_never_rolled_out(tmp_path: Path) -> None:
    _deploy(tmp_path, 1)
    _deploy(tmp_path, 2, canary=10)
    for share in (25, 50, 99, 0):
        isvc = local_controller.set_canary_percent("m", share, tmp_path)
    assert isvc["status"]["components"]["predictor"]["latestRolledoutRevision"] == (
        "m-predictor-00001"
    )
    assert _split(_deploy(tmp_path, 3, canary=10)) == {"00003": 10, "00001": 90}


def test_a_conditional_write_over_someone_elses_change_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    from serving.inference_service import TrafficChangedError, traffic_spec

    _deploy(tmp_path, 1)
    set_by_rollout = local_controller.set_canary_percent("m", 25, tmp_path)
    expected = traffic_spec(set_by_rollout)
    local_controller.set_canary_percent("m", 0, tmp_path)  # a human's rollback
    before = local_controller.read_state("m", tmp_path)
    with pytest.raises(
        TrafficChangedError, match=r"stopped by a rollback: canaryTrafficPercent is 0"
    ):
        local_controller.set_canary_percent("m", 50, tmp_path, expected=expected)
    assert local_controller.read_state("m", tmp_path) == before


def test_a_write_on_a_stale_resource_version_is_refused(tmp_path: Path) -> None:
    _deploy(tmp_path, 1)
    read = local_controller.read_state("m", tmp_path)["inferenceService"]["metadata"]
    local_controller.annotate("m", "k", "v", tmp_path)  # any write bumps the resourceVersion
    with pytest.raises(local_controller.ConflictError, match="changed since it was read"):
        local_controller.set_canary_percent("m", 0, tmp_path, if_version=read["resourceVersion"])


def test_a_second_rollout_lock_of_one_service_is_refused_naming_the_holder(tmp_path: Path) -> None:
    from serving.inference_service import RolloutLockedError

    with local_controller.rollout_lock("m", tmp_path):
        with pytest.raises(
            RolloutLockedError, match=r"another rollout of 'm' is running \(pid \d+"
        ):
            with local_controller.rollout_lock("m", tmp_path):
                pass  # pragma: no cover
    with local_controller.rollout_lock("m", tmp_path):  # released: free again
        pass
