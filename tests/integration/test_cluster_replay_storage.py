"""Replay of KServe's storage initializer against a store the project's own code wrote.

The storage-initializer container runs the `kserve-storage` package (KServe v0.20.0
`python/storage-initializer/scripts/initializer-entrypoint`: ``Storage.download_files(uris,
dests)``). `make test` installs the package at the Makefile's KServe version into its own venv
(its pins clash with the project's) and names its Python in ``MLOPS_KSERVE_STORAGE_PYTHON``.

The environment is the one KServe's credential builder derives from the rendered Secret
`kserve-minio-s3` (KServe v0.20.0 `pkg/credentials/s3/s3_secret.go` and `utils.go`), with the
in-cluster MinIO host replaced by a moto S3 server. That server gets the two users the bucket
Job creates: read-write, and read-only with the Job's own policy document, which moto enforces.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import joblib
import pytest
from botocore.exceptions import ClientError

from tests.conftest import find_object, render_overlay, secret_value

ROOT = Path(__file__).parents[2]
MODEL = "breast-cancer"
ANNOTATION = "serving.kserve.io/"
# MinIO's built-in `readwrite` policy, which the bucket Job attaches to the pipeline's user.
READ_WRITE = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": ["arn:aws:s3:::*"]}],
}


def _storage_python() -> str:
    named = os.environ.get("MLOPS_KSERVE_STORAGE_PYTHON")
    if named:
        if not Path(named).exists():
            pytest.fail(f"MLOPS_KSERVE_STORAGE_PYTHON={named} does not exist: run `make test`")
        return named
    pytest.skip("kserve-storage is not installed: `make test` installs it and sets its Python")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _iam(endpoint: str):  # noqa: ANN202 - a boto3 client
    return boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )


@pytest.fixture(scope="module")
def store_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """moto's S3 server with the bucket Job's users: read-write and read-only (its policy)."""
    objects = render_overlay("dev")
    policy = find_object(objects, "ConfigMap", "models-read-only-policy")
    (document,) = policy["data"].values()
    # moto checks HeadBucket as its own action `s3:HeadBucket`; AWS and MinIO check it as
    # s3:ListBucket (AWS S3 API reference, HeadBucket: "you must have the s3:ListBucket
    # permission"), which the document grants. moto gets that one equivalent extra.
    for_moto = json.loads(document)
    for_moto["Statement"].append(
        {"Effect": "Allow", "Action": ["s3:HeadBucket"], "Resource": ["arn:aws:s3:::models"]}
    )
    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "6"}  # the six IAM calls below
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    moto = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=log,
        stderr=log,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert moto.poll() is None and time.monotonic() < deadline, "moto_server did not start"
        time.sleep(0.2)
    try:
        iam = _iam(endpoint)
        keys = {}
        for user, doc in (
            ("mlops", json.dumps(READ_WRITE)),
            ("kserve-reader", json.dumps(for_moto)),
        ):
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="store", PolicyDocument=doc)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        yield {"endpoint": endpoint, "keys": keys, "objects": objects, "policy": document}
    finally:
        moto.terminate()
        moto.wait(timeout=10)
        log.close()


def _s3(server: dict, user: str):  # noqa: ANN202 - a boto3 client
    access, secret = server["keys"][user]
    return boto3.client(
        "s3",
        endpoint_url=server["endpoint"],
        region_name="us-east-1",
        aws_access_key_id=access,
        aws_secret_access_key=secret,
    )


def _credential_builder_env(secret: dict, endpoint_host: str) -> dict[str, str]:
    """What KServe's BuildSecretEnvs + BuildS3EnvVars put into the initializer container."""
    annotations = secret["metadata"]["annotations"]
    env = {
        "AWS_ACCESS_KEY_ID": secret_value(secret, "AWS_ACCESS_KEY_ID"),
        "AWS_SECRET_ACCESS_KEY": secret_value(secret, "AWS_SECRET_ACCESS_KEY"),
    }
    endpoint = annotations[ANNOTATION + "s3-endpoint"]
    assert "://" not in endpoint, "s3-endpoint is host:port; s3-usehttps picks the scheme"
    endpoint = endpoint_host  # the in-cluster MinIO -> the test server
    https = annotations[ANNOTATION + "s3-usehttps"]
    env["S3_USE_HTTPS"] = https
    env["S3_ENDPOINT"] = endpoint
    env["AWS_ENDPOINT_URL"] = ("http://" if https == "0" else "https://") + endpoint
    for annotation, name in (
        ("s3-verifyssl", "S3_VERIFY_SSL"),
        ("s3-useanoncredential", "awsAnonymousCredential"),
        ("s3-region", "AWS_DEFAULT_REGION"),
    ):
        if ANNOTATION + annotation in annotations:
            env[name] = annotations[ANNOTATION + annotation]
    return env


def _sha256_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_the_read_only_policy_only_lists_and_gets_the_model_bucket(store_server: dict) -> None:
    document = json.loads(store_server["policy"])
    actions = {a for s in document["Statement"] for a in s["Action"]}
    resources = {r for s in document["Statement"] for r in s["Resource"]}
    assert all(s["Effect"] == "Allow" for s in document["Statement"])
    assert actions == {"s3:GetBucketLocation", "s3:ListBucket", "s3:GetObject"}
    assert resources == {"arn:aws:s3:::models", "arn:aws:s3:::models/*"}


def test_the_storage_initializer_downloads_exactly_version_1_with_the_read_only_key(
    store_server: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model
) -> None:
    python = _storage_python()
    from mlops.store import open_store

    # The pipeline's side: the read-write key, the project's own store, versions 1 to 10.
    access, secret = store_server["keys"]["mlops"]
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / ".mlops"))
    monkeypatch.setenv("MLOPS_S3_ENDPOINT", store_server["endpoint"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    _s3(store_server, "mlops").create_bucket(Bucket="models")
    store = open_store("s3://models")
    model_file = tmp_path / "model.joblib"
    joblib.dump(tiny_model[0], model_file)
    for version in range(1, 11):
        assert store.publish(MODEL, model_file, {"run": f"run-{version}"}) == version
    uri = store.version_uri(MODEL, 1)
    # Version 1's files: every object the store wrote under the version's prefix.
    rw = _s3(store_server, "mlops")
    listed = rw.list_objects_v2(Bucket="models", Prefix=f"{MODEL}/1/")["Contents"]
    expected = {
        o["Key"].removeprefix(f"{MODEL}/1/"): hashlib.sha256(
            rw.get_object(Bucket="models", Key=o["Key"])["Body"].read()
        ).hexdigest()
        for o in listed
    }
    assert "model.joblib" in expected

    # The predictor's side: the rendered Secret's environment, the read-only key.
    objects = store_server["objects"]
    rendered = find_object(objects, "Secret", "kserve-minio-s3")
    account = find_object(objects, "ServiceAccount", "kserve-minio-sa")
    assert {"name": "kserve-minio-s3"} in account["secrets"]
    env = _credential_builder_env(rendered, store_server["endpoint"].removeprefix("http://"))
    env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = store_server["keys"]["kserve-reader"]
    dest = tmp_path / "mnt-models"
    download = (
        "import sys; from kserve_storage import Storage; "
        "Storage.download_files([sys.argv[1]], [sys.argv[2]])"
    )
    result = subprocess.run(
        [python, "-c", download, uri, str(dest)],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    arrived = _sha256_tree(dest)
    print(f"\nstorage initializer replay: {uri} -> {arrived}")
    assert arrived == expected

    # The same key may not write: moto enforces the read-only policy document.
    with pytest.raises(ClientError) as refused:
        _s3(store_server, "kserve-reader").put_object(Bucket="models", Key="x", Body=b"x")
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
