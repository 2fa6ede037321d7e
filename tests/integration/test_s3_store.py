"""The store and the pipeline on S3, against moto's S3-compatible server started by the tests.

The cluster uses MinIO; no MinIO server binary is installable here, so these tests speak the
same S3 API, through the same ``minio`` client, to ``moto[server]`` (see ``s3_server.py``).
"""

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mlops.s3_store import S3Store
from mlops.settings import S3Settings
from mlops.store import StoreError, fetch_version, open_store, sha256_file
from pipelines.local import run_locally
from tests.integration.s3_server import S3Server


@pytest.fixture
def s3_env(s3_server: S3Server, mlops_home: Path, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


def _model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.joblib"
    path.write_bytes(tmp_path.name.encode())
    return path


def test_s3_versions_are_numbered_and_never_overwritten(s3_env: S3Server, tmp_path: Path) -> None:
    store = open_store("s3://models/never-overwrite")
    model = _model_file(tmp_path)
    first = store.publish("m", model, {"sha256": sha256_file(model), "n": 1})
    second = store.publish("m", model, {"sha256": sha256_file(model), "n": 2})
    assert (first, second) == (1, 2)
    assert store.versions("m") == [1, 2]
    assert store.read_metadata("m", 1)["n"] == 1


def _client(server: S3Server):
    from minio import Minio

    return Minio(server.endpoint.removeprefix("http://"), server.access_key, server.secret_key,
                 secure=False)


def _objects(server: S3Server, prefix: str) -> dict[str, bytes]:
    client = _client(server)
    return {
        str(obj.object_name): client.get_object("models", str(obj.object_name)).read()
        for obj in client.list_objects("models", prefix=prefix, recursive=True)
    }


def test_concurrent_s3_publishes_get_distinct_complete_versions_and_delete_nothing(
    s3_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 24 publishers at once, 8 of them refused by the server half-way (no right to create
    # metadata.json): every good one gets its own version holding its own model, and no
    # failure removes anything another writer wrote.
    good, failing = 24, 8
    files = []
    for i in range(good + failing):
        path = tmp_path / f"model-{i}.joblib"
        path.write_bytes(f"model of writer {i} ".encode() * 500)
        files.append(path)
    stores = [open_store("s3://models/concurrent") for _ in range(good)]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_env.no_metadata_access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.no_metadata_secret_key)
    stores += [open_store("s3://models/concurrent") for _ in range(failing)]
    start = threading.Barrier(good + failing)

    def publish(i: int) -> int | str:
        start.wait()
        try:
            return stores[i].publish("m", files[i], {"sha256": sha256_file(files[i]), "i": i})
        except StoreError as err:
            return str(err)

    with ThreadPoolExecutor(good + failing) as pool:
        results = list(pool.map(publish, range(good + failing)))

    versions = results[:good]
    assert all(isinstance(v, int) for v in versions), versions
    assert sorted(versions) == sorted(set(versions))  # distinct
    assert all("could not write" in str(r) for r in results[good:]), results[good:]
    assert stores[0].versions("m") == sorted(versions)
    for i, version in enumerate(versions):
        path, metadata = fetch_version(stores[0].version_uri("m", version), tmp_path / f"v{i}")
        assert metadata["i"] == i
        assert path.read_bytes() == files[i].read_bytes()


def test_an_s3_publish_that_fails_half_way_deletes_nothing_and_its_number_is_not_reused(
    s3_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model_file(tmp_path)
    store = open_store("s3://models/half-way")
    first = store.publish("m", model, {"sha256": sha256_file(model)})
    before = _objects(s3_env, "half-way/")
    refused = S3Store("models", "half-way", S3Settings(
        s3_env.endpoint.removeprefix("http://"), s3_env.no_metadata_access_key,
        s3_env.no_metadata_secret_key, False, "us-east-1"))
    listings: list[int] = []
    taken = S3Store._taken_versions

    def stale_then_fresh(self: S3Store, model_name: str) -> list[int]:
        # The first listing predates version 1, as a concurrent writer's would.
        listings.append(1)
        return [] if len(listings) == 1 else taken(self, model_name)

    monkeypatch.setattr(S3Store, "_taken_versions", stale_then_fresh)
    other = tmp_path / "other.joblib"
    other.write_bytes(b"another model")
    with pytest.raises(StoreError, match="could not write s3://models/half-way/m/2/"):
        refused.publish("m", other, {"sha256": sha256_file(other)})

    after = _objects(s3_env, "half-way/")
    assert {k: v for k, v in after.items() if k in before} == before  # nothing lost or changed
    assert store.versions("m") == [first]
    fetch_version(store.version_uri("m", first), tmp_path / "v1")
    assert store.publish("m", model, {"sha256": sha256_file(model)}) == 3


def test_a_half_written_s3_version_keeps_its_number(s3_env: S3Server, tmp_path: Path) -> None:
    # A crashed writer left a model file and no metadata.json (and no claim, as older code).
    model = _model_file(tmp_path)
    _client(s3_env).fput_object("models", "crashed/m/1/model.joblib", str(model))
    store = open_store("s3://models/crashed")
    assert store.versions("m") == []
    assert store.publish("m", model, {"sha256": sha256_file(model)}) == 2


def test_a_corrupt_s3_metadata_json_is_one_store_error_naming_it(
    s3_env: S3Server, tmp_path: Path
) -> None:
    model = _model_file(tmp_path)
    store = open_store("s3://models/corrupt")
    version = store.publish("m", model, {"sha256": sha256_file(model)})
    (tmp_path / "bad.json").write_text("{oops")
    _client(s3_env).fput_object("models", "corrupt/m/1/metadata.json", str(tmp_path / "bad.json"))
    with pytest.raises(StoreError, match=r"s3://models/corrupt/m/1/metadata.json is not valid "
                                         r"JSON .*publish a new version"):
        fetch_version(store.version_uri("m", version), tmp_path / "a")


def test_a_tampered_s3_object_is_refused(s3_env: S3Server, tmp_path: Path) -> None:
    from minio import Minio

    store = open_store("s3://models/tamper")
    model = _model_file(tmp_path)
    version = store.publish("m", model, {"sha256": sha256_file(model)})
    (tmp_path / "evil").write_bytes(b"evil")
    host = s3_env.endpoint.removeprefix("http://")
    Minio(host, s3_env.access_key, s3_env.secret_key, secure=False).fput_object(
        "models", f"tamper/m/{version}/model.joblib", str(tmp_path / "evil"))
    with pytest.raises(StoreError, match="refusing to load"):
        fetch_version(store.version_uri("m", version), tmp_path / "download")


def test_pipeline_uploads_to_s3_and_deploys_the_s3_version(
    s3_env: S3Server, mlops_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    breast_cancer,
) -> None:
    # The training data comes from the bucket too.
    breast_cancer.to_csv(tmp_path / "bc.csv", index=False)
    from minio import Minio

    Minio(s3_env.endpoint.removeprefix("http://"), s3_env.access_key, s3_env.secret_key,
          secure=False).fput_object("models", "data/bc.csv", str(tmp_path / "bc.csv"))
    monkeypatch.setenv("MLOPS_STORE_URI", "s3://models")

    summary = run_locally({"source": "s3://models/data/bc.csv"}, mlops_home)

    assert summary.deploy and summary.version == 1
    assert summary.storage_uri == "s3://models/breast-cancer/1/"
    path, metadata = fetch_version(summary.storage_uri, tmp_path / "v1")
    assert metadata["sha256"] == sha256_file(path)
    assert metadata["params"]["estimator"] == "logistic_regression"
    from serving import local_controller

    isvc = local_controller.read_state("breast-cancer", mlops_home)["inferenceService"]
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://models/breast-cancer/1/"


def _mlops_run(env: dict[str, str], home: Path) -> subprocess.CompletedProcess[str]:
    full_env = {"PATH": "/usr/bin:/bin", "MLOPS_HOME": str(home),
                "MLOPS_STORE_URI": "s3://models", **env}
    return subprocess.run([sys.executable, "-m", "mlops.cli", "run"], env=full_env,
                          capture_output=True, text=True, timeout=120)


def test_wrong_credentials_fail_in_one_line_and_write_nothing(
    s3_server: S3Server, tmp_path: Path
) -> None:
    result = _mlops_run(s3_server.env(secret_key="wrong-secret"), tmp_path / ".mlops")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: S3 endpoint " + s3_server.endpoint.removeprefix("http://")
        + " refused access to bucket 'models': AccessDenied (Access denied); "
        "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    ]
    assert not (tmp_path / ".mlops" / "serving").exists()


def test_unreachable_endpoint_fails_in_one_line(s3_server: S3Server, tmp_path: Path) -> None:
    env = {**s3_server.env(), "MLOPS_S3_ENDPOINT": "http://127.0.0.1:9"}
    result = _mlops_run(env, tmp_path / ".mlops")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot reach S3 endpoint 127.0.0.1:9" in result.stderr
