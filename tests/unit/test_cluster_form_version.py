"""The cluster form shows the version the InferenceService serves, its metadata signed (issue 19).

The frontend (``python -m serving.form --inference-service-namespace NS``) reads the
InferenceService through the real ``KServeClient`` from the fake Kubernetes API
(``kserve_status_fake``, KServe's and Knative's status logic at v0.20.0), takes the stable
version as ``mlops`` does (``serving.deploy.deployed_versions``), and reads that version's
``metadata.json`` only with a valid signature.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mlops.store import LocalStore, StoreError, sha256_file
from serving import kubernetes_target
from serving.deploy import deploy_inference_service
from serving.form import FrontendSettings, build_frontend
from serving.form_schema import _signed_schema, served_schema
from serving.inference_service import PredictorSettings
from tests.unit.kserve_status_fake import FakeCluster, serve, write_kubeconfig

NS = "kubeflow-user"
NAME = "breast-cancer"


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCluster]:
    found = FakeCluster()
    monkeypatch.setattr(kubernetes_target, "POLL_INTERVAL_S", 0.01)
    with serve(found) as url:
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(url, tmp_path / "kubeconfig")))
        yield found
    _signed_schema.cache_clear()


def _publish(store: LocalStore, tmp: Path, features: list[str]) -> int:
    path = tmp / f"model-{len(store.versions(NAME))}.joblib"
    path.write_bytes(b"not unpickled by the form")
    metadata = {"sha256": sha256_file(path), "feature_names": features}
    return store.publish(NAME, path, metadata)


def _deploy(store: LocalStore, version: int, tmp: Path, percent: int | None) -> None:
    settings = PredictorSettings(
        name=NAME,
        namespace=NS,
        storage_uri=store.version_uri(NAME, version),
        model_version=version,
        canary_traffic_percent=percent,
    )
    deploy_inference_service(settings, "kubernetes", tmp, 30)


def test_the_form_is_the_serving_versions_not_the_newest(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    first = _publish(store, tmp_path, ["a", "b", "c"])
    _deploy(store, first, tmp_path, None)
    # A newer version in another column order: published, never served.
    _publish(store, tmp_path, ["c", "b", "a"])
    schema = served_schema(str(tmp_path / "store"), NAME, NS)
    assert schema["version"] == "1"
    assert [f["name"] for f in schema["features"]] == ["a", "b", "c"]


def test_during_a_canary_the_form_is_the_stable_versions(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    _deploy(store, _publish(store, tmp_path, ["a", "b", "c"]), tmp_path, None)
    _deploy(store, _publish(store, tmp_path, ["a", "b", "c"]), tmp_path, 10)
    assert served_schema(str(tmp_path / "store"), NAME, NS)["version"] == "1"


def test_a_version_whose_metadata_changed_after_signing_is_not_shown(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    version = _publish(store, tmp_path, ["a", "b", "c"])
    _deploy(store, version, tmp_path, None)
    path = tmp_path / "store" / NAME / str(version) / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["feature_names"] = ["c", "b", "a"]  # whoever can write the store reorders
    path.chmod(0o644)
    path.write_text(json.dumps(metadata))
    with pytest.raises(StoreError, match="the form of .* is not shown: .*signature"):
        served_schema(str(tmp_path / "store"), NAME, NS)


def test_the_frontend_answers_the_served_form_and_503_before_any_deploy(
    cluster: FakeCluster, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    settings = FrontendSettings(
        upstream="http://127.0.0.1:9",
        model_name=NAME,
        store_uri=str(tmp_path / "store"),
        namespace=NS,
    )
    with TestClient(build_frontend(settings), base_url="http://127.0.0.1") as client:
        before = client.get("/form/schema")
        _deploy(store, _publish(store, tmp_path, ["x", "y"]), tmp_path, None)
        after = client.get("/form/schema")
    assert before.status_code == 503
    assert before.json()["error"].startswith("InferenceService 'breast-cancer' in namespace")
    assert after.status_code == 200 and after.json()["version"] == "1"
