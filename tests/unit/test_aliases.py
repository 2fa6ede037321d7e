"""The MLflow aliases follow the serving traffic, by one rule (issue 8 item 9).

Locally and in the "cluster": the fake Kubernetes API of ``kserve_status_fake``, whose Knative
Revisions carry what KServe v0.20.0 puts on them (the version label, the storage URI).
"""

from collections.abc import Iterator
from pathlib import Path

import joblib
import pytest

from mlops import registry
from serving import kubernetes_target
from serving.deploy import (
    ServingVersions,
    deploy_inference_service,
    deployed_versions,
    serving_versions,
    set_canary_traffic,
    sync_aliases,
)
from serving.inference_service import PredictorSettings
from tests.unit.kserve_status_fake import FakeCluster, serve, write_kubeconfig

NS = "models"


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


def test_one_revision_on_both_sides_of_the_split_is_no_canary() -> None:
    # What KServe shows after a retried first deploy: latest 10% and prev 90%, both revision 1.
    isvc = _isvc(10, 90)
    for target in isvc["status"]["components"]["predictor"]["traffic"]:
        target["revisionName"] = "r1"
    assert serving_versions(isvc, {"r1": "1"}) == ServingVersions(stable="1", canary=None)


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCluster]:
    found = FakeCluster()
    monkeypatch.setattr(kubernetes_target, "POLL_INTERVAL_S", 0.01)
    with serve(found) as url:
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(url, tmp_path / "kubeconfig")))
        yield found


def _cluster_deploy(uri: str, state: Path, version: int, percent: int = 10) -> None:
    settings = PredictorSettings(name="m", namespace=NS, storage_uri=f"s3://models/m/{version}/",
                                 model_version=version, canary_traffic_percent=percent)
    applied = deploy_inference_service(settings, "kubernetes", state, timeout_s=30)
    sync_aliases(uri, applied, "kubernetes", state)


def test_in_the_cluster_aliases_follow_deploy_canary_promote_and_rollback(
    cluster: FakeCluster, tmp_path: Path, two_registered_versions: str
) -> None:
    uri, state = two_registered_versions, tmp_path / "state"

    _cluster_deploy(uri, state, 1)
    assert _aliases(uri) == ("1", None)
    _cluster_deploy(uri, state, 2)
    assert _aliases(uri) == ("1", "2")
    set_canary_traffic("m", None, "kubernetes", state_dir=state, namespace=NS, tracking_uri=uri,
                       timeout_s=30)
    assert _aliases(uri) == ("2", None)
    # Issue 8 item 9 in the cluster: traffic {2: 0, 1: 100}, and champion must name 1.
    set_canary_traffic("m", 0, "kubernetes", state_dir=state, namespace=NS, tracking_uri=uri,
                       timeout_s=30)
    assert _aliases(uri) == ("1", None)
    assert deployed_versions("m", "kubernetes", state_dir=state, namespace=NS) == ServingVersions(
        "1", None)


def test_in_the_cluster_a_retried_first_deploy_has_no_challenger(
    cluster: FakeCluster, tmp_path: Path, two_registered_versions: str
) -> None:
    uri, state = two_registered_versions, tmp_path / "state"
    cluster.slow_uris["s3://models/m/1/"] = 10_000
    with pytest.raises(RuntimeError, match="within 1s"):
        deploy_inference_service(PredictorSettings(name="m", namespace=NS,
                                                   storage_uri="s3://models/m/1/",
                                                   model_version=1), "kubernetes", state, 1)
    cluster.start_after(3)

    _cluster_deploy(uri, state, 1)  # KServe then splits revision 1 with itself: 10% and 90%

    traffic = kubernetes_target.get("m", NS)["status"]["components"]["predictor"]["traffic"]
    assert {t["revisionName"] for t in traffic} == {"m-predictor-00001"} and len(traffic) == 2
    assert _aliases(uri) == ("1", None)
    assert deployed_versions("m", "kubernetes", state_dir=state, namespace=NS) == ServingVersions(
        "1", None)


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
