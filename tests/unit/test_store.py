import json
from pathlib import Path

import pytest

from mlops.store import (
    LocalStore,
    StoreError,
    fetch_version,
    open_store,
    sha256_file,
    split_version_uri,
)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.joblib"
    path.write_bytes(b"not really a model, but bytes with a digest")
    return path


def _metadata(path: Path) -> dict:
    return {"sha256": sha256_file(path), "metrics": {"accuracy": 0.9}}


def test_publish_numbers_versions_and_never_overwrites(tmp_path: Path, model_file: Path) -> None:
    store = LocalStore(tmp_path / "store")
    assert store.publish("m", model_file, _metadata(model_file)) == 1
    first = (tmp_path / "store" / "m" / "1" / "metadata.json").read_text()
    assert store.publish("m", model_file, _metadata(model_file)) == 2
    assert store.versions("m") == [1, 2]
    assert (tmp_path / "store" / "m" / "1" / "metadata.json").read_text() == first


def test_incomplete_version_is_not_listed_and_its_number_is_not_reused(
    tmp_path: Path, model_file: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    (tmp_path / "store" / "m" / "1").mkdir(parents=True)  # a version without metadata.json
    assert store.versions("m") == []
    assert store.publish("m", model_file, _metadata(model_file)) == 2


def test_failed_publish_leaves_nothing_behind(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    with pytest.raises(StoreError, match="could not write"):
        store.publish("m", tmp_path / "missing.joblib", {"sha256": "x"})
    assert list((tmp_path / "store" / "m").iterdir()) == []


def test_fetch_version_checks_the_sha256(tmp_path: Path, model_file: Path) -> None:
    store = LocalStore(tmp_path / "store")
    version = store.publish("m", model_file, _metadata(model_file))
    path, metadata = fetch_version(store.version_uri("m", version), tmp_path / "a")
    assert sha256_file(path) == metadata["sha256"]

    (tmp_path / "store" / "m" / "1" / "model.joblib").write_bytes(b"tampered")
    with pytest.raises(StoreError, match="refusing to load"):
        fetch_version(store.version_uri("m", version), tmp_path / "b")


def test_metadata_is_read_back(tmp_path: Path, model_file: Path) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    store.publish("m", model_file, _metadata(model_file))
    assert store.read_metadata("m", 1)["metrics"] == {"accuracy": 0.9}
    assert json.loads((tmp_path / "store/m/1/metadata.json").read_text())["sha256"]
    with pytest.raises(StoreError, match="no version 7"):
        store.read_metadata("m", 7)


def test_split_version_uri() -> None:
    assert split_version_uri("s3://models/breast-cancer/3") == ("s3://models", "breast-cancer", 3)
    with pytest.raises(ValueError, match="does not name a model version"):
        split_version_uri("s3://models/breast-cancer/latest")


def test_s3_store_needs_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLOPS_S3_ENDPOINT", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with pytest.raises(ValueError, match="MLOPS_S3_ENDPOINT is not set"):
        open_store("s3://models")


def test_s3_store_needs_both_keys_or_neither(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_S3_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "minio")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(ValueError, match="set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        open_store("s3://models")
