"""The MLflow aliases follow the serving traffic, by one rule (issue 8 item 9)."""

from pathlib import Path

import joblib
import pytest

from mlops import registry
from serving.deploy import (
    ServingVersions,
    deploy_inference_service,
    deployed_versions,
    revision_versions,
    serving_versions,
    set_canary_traffic,
    sync_aliases,
)
from serving.inference_service import PredictorSettings


def _isvc(latest: int, prev: int | None = None) -> dict:
    traffic = [{"tag": "latest", "revisionName": "r2", "latestRevision": True, "percent": latest}]
    if prev is not None:
        traffic.append({"tag": "prev", "revisionName": "r1", "latestRevision": False,
                        "percent": prev})
    return {"metadata": {"name": "m", "labels": {"mlops.example.com/model-version": "2"}},
            "status": {"components": {"predictor": {"latestCreatedRevision": "r2",
                                                    "traffic": traffic}}}}


@pytest.mark.parametrize(
    ("latest", "prev", "expected"),
    [
        (100, None, ServingVersions(stable="2", canary=None)),  # first deploy, or promoted
        (10, 90, ServingVersions(stable="1", canary="2")),  # canary
        (0, 100, ServingVersions(stable="1", canary=None)),  # rolled back
    ],
)
def test_champion_is_the_full_traffic_version_and_challenger_the_canary(
    latest: int, prev: int | None, expected: ServingVersions
) -> None:
    assert serving_versions(_isvc(latest, prev), {"r1": "1", "r2": "2"}) == expected


def test_in_the_cluster_only_the_latest_revision_has_a_known_version(tmp_path: Path) -> None:
    isvc = _isvc(10, 90)
    assert revision_versions(isvc, "kubernetes", tmp_path) == {"r2": "2"}
    assert serving_versions(isvc, {"r2": "2"}) == ServingVersions(stable=None, canary="2")


@pytest.fixture
def two_registered_versions(tmp_path: Path, tiny_model) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    joblib.dump(tiny_model[0], tmp_path / "model.joblib")
    for version in (1, 2):
        run_id = registry.log_training_run(uri, "m", {}, {"f1": 0.9}, tmp_path / "model.joblib",
                                           {})
        registry.register_version(uri, "m", run_id, version, f"file:///store/m/{version}")
    return uri


def _aliases(uri: str) -> tuple[str | None, str | None]:
    def version(alias: str) -> str | None:
        found = registry.version_of_alias(uri, "m", alias)
        return str(found[0]) if found else None

    return version(registry.CHAMPION), version(registry.CHALLENGER)


def test_aliases_follow_deploy_canary_promote_and_rollback(
    tmp_path: Path, two_registered_versions: str
) -> None:
    uri, state = two_registered_versions, tmp_path / "state"

    def deploy(version: int) -> None:
        settings = PredictorSettings(name="m", storage_uri=f"file:///store/m/{version}",
                                     model_version=version, canary_traffic_percent=10)
        sync_aliases(uri, deploy_inference_service(settings, "local", state), "local", state)

    deploy(1)
    assert _aliases(uri) == ("1", None)
    deploy(2)
    assert _aliases(uri) == ("1", "2")
    set_canary_traffic("m", None, "local", state_dir=state, tracking_uri=uri)
    assert _aliases(uri) == ("2", None)
    # The bug of issue 8 item 9: traffic {2: 0, 1: 100} while champion still named 2.
    set_canary_traffic("m", 0, "local", state_dir=state, tracking_uri=uri)
    assert _aliases(uri) == ("1", None)
    assert deployed_versions("m", "local", state_dir=state) == ServingVersions("1", None)


def test_a_serving_version_that_is_not_registered_clears_the_champion(
    two_registered_versions: str,
) -> None:
    uri = two_registered_versions
    registry.set_aliases(uri, "m", "1", "2")
    assert _aliases(uri) == ("1", "2")
    registry.set_aliases(uri, "m", "7", None)
    assert _aliases(uri) == (None, None)


def test_nothing_deployed_reads_as_none(tmp_path: Path) -> None:
    assert deployed_versions("m", "local", state_dir=tmp_path) is None
