"""The store and the pipeline on S3, against moto's S3-compatible server started by the tests.

The cluster uses MinIO; no MinIO server binary is installable here, so these tests speak the
same S3 API, through the same ``minio`` client, to ``moto[server]`` (see ``s3_server.py``).
"""

import subprocess
import sys
from pathlib import Path

import pytest

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
    assert summary.storage_uri == "s3://models/breast-cancer/1"
    path, metadata = fetch_version(summary.storage_uri, tmp_path / "v1")
    assert metadata["sha256"] == sha256_file(path)
    assert metadata["params"]["estimator"] == "logistic_regression"
    from serving import local_controller

    isvc = local_controller.read_state("breast-cancer", mlops_home)["inferenceService"]
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "s3://models/breast-cancer/1"


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
