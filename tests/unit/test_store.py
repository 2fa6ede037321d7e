import json
import threading
from concurrent.futures import ThreadPoolExecutor
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
    with pytest.raises(StoreError, match="missing.joblib: no such file"):
        store.publish("m", tmp_path / "missing.joblib", {"sha256": "x"})
    assert not (tmp_path / "store" / "m").exists()


def test_concurrent_local_publishes_get_distinct_complete_versions(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    writers = 16
    files = []
    for i in range(writers):
        path = tmp_path / f"model-{i}.joblib"
        path.write_bytes(f"model of writer {i}".encode() * 1000)
        files.append(path)
    start = threading.Barrier(writers)

    def publish(path: Path) -> int:
        start.wait()
        return store.publish("m", path, _metadata(path))

    with ThreadPoolExecutor(writers) as pool:
        versions = list(pool.map(publish, files))

    assert sorted(versions) == list(range(1, writers + 1))
    assert store.versions("m") == list(range(1, writers + 1))
    for path, version in zip(files, versions, strict=True):
        fetched, metadata = fetch_version(store.version_uri("m", version), tmp_path / str(version))
        assert fetched.read_bytes() == path.read_bytes()
        assert metadata["sha256"] == sha256_file(path)


def test_a_version_completed_after_the_listing_is_not_overwritten(
    tmp_path: Path, model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "store")
    store.publish("m", model_file, _metadata(model_file))
    first = sorted(p.read_bytes() for p in (tmp_path / "store/m/1").iterdir())
    listings: list[int] = []
    taken = LocalStore._taken_versions

    def stale_then_fresh(self: LocalStore, base: Path) -> list[int]:
        # The first listing predates version 1, as a concurrent writer's would.
        listings.append(1)
        return [] if len(listings) == 1 else taken(self, base)

    monkeypatch.setattr(LocalStore, "_taken_versions", stale_then_fresh)
    other = tmp_path / "other.joblib"
    other.write_bytes(b"another model")
    assert store.publish("m", other, _metadata(other)) == 2
    assert sorted(p.read_bytes() for p in (tmp_path / "store/m/1").iterdir()) == first


def test_a_half_written_version_after_an_empty_directory_keeps_its_number(
    tmp_path: Path, model_file: Path
) -> None:
    # Linux renames a directory onto an existing EMPTY directory: a claimed, still empty
    # version of another writer must not be taken over.
    store = LocalStore(tmp_path / "store")
    store.publish("m", model_file, _metadata(model_file))
    (tmp_path / "store" / "m" / "2").mkdir()
    assert store.publish("m", model_file, _metadata(model_file)) == 3
    assert list((tmp_path / "store" / "m" / "2").iterdir()) == []


def test_fetch_version_checks_the_sha256(tmp_path: Path, model_file: Path) -> None:
    store = LocalStore(tmp_path / "store")
    version = store.publish("m", model_file, _metadata(model_file))
    path, metadata = fetch_version(store.version_uri("m", version), tmp_path / "a")
    assert sha256_file(path) == metadata["sha256"]

    (tmp_path / "store" / "m" / "1" / "model.joblib").write_bytes(b"tampered")
    with pytest.raises(StoreError, match="refusing to load"):
        fetch_version(store.version_uri("m", version), tmp_path / "b")


def test_fetch_refuses_a_version_whose_metadata_records_no_sha256(
    tmp_path: Path, model_file: Path
) -> None:
    store = LocalStore(tmp_path / "store")
    version = store.publish("m", model_file, {"metrics": {"accuracy": 0.9}})
    with pytest.raises(StoreError, match=r"metadata.json records no sha256 of model.joblib"):
        fetch_version(store.version_uri("m", version), tmp_path / "a")


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"{not json", "is not valid JSON"), (b"[1, 2]", "holds a list, not an object")],
)
def test_a_corrupt_metadata_json_is_one_store_error_naming_the_file(
    tmp_path: Path, model_file: Path, content: bytes, problem: str
) -> None:
    store = LocalStore(tmp_path / "store")
    version = store.publish("m", model_file, _metadata(model_file))
    path = tmp_path / "store" / "m" / "1" / "metadata.json"
    path.write_bytes(content)
    for call in (
        lambda: store.read_metadata("m", version),
        lambda: fetch_version(store.version_uri("m", version), tmp_path / "a"),
    ):
        with pytest.raises(StoreError) as caught:
            call()
        message = str(caught.value)
        assert str(path) in message and problem in message
        assert "publish a new version" in message and "\n" not in message


def test_versions_of_a_model_path_that_is_a_file_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "m").write_text("stray")
    with pytest.raises(StoreError, match=r"store/m is a file, not a model directory"):
        LocalStore(tmp_path / "store").versions("m")


def test_version_uris_end_with_a_slash(tmp_path: Path) -> None:
    # KServe's storage initializer lists by prefix: without the slash version 1 is also 10-19.
    store = LocalStore(tmp_path / "store")
    assert store.version_uri("m", 1) == f"file://{tmp_path / 'store'}/m/1/"
    assert split_version_uri(store.version_uri("m", 1)) == (
        f"file://{tmp_path / 'store'}", "m", 1)


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
