"""The model store: ``<root>/<model-name>/<version>/{model.joblib,metadata.json}``.

The same layout lives in a local directory (the embedded default) or in an S3 bucket (MinIO in
the cluster), so an InferenceService's ``storageUri`` can point at the version directory either
way. A version is written once: publishing never replaces an existing version, and a version is
complete only when its ``metadata.json`` exists (it is written last).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from mlops.settings import S3Settings

MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"


class StoreError(RuntimeError):
    """The store cannot be read or written; the message says why and what to do."""


def sha256_file(path: str | Path) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ModelStore(Protocol):
    """What every store backend offers."""

    uri: str

    def versions(self, model_name: str) -> list[int]:
        """Complete versions of a model, oldest first."""
        ...

    def publish(self, model_name: str, model_file: Path, metadata: dict[str, Any]) -> int:
        """Write a new version and return its number; never overwrites one."""
        ...

    def read_metadata(self, model_name: str, version: int) -> dict[str, Any]:
        """The metadata of a complete version."""
        ...

    def download(self, model_name: str, version: int, dest: Path) -> Path:
        """Copy a version's files into ``dest`` and return ``dest``."""
        ...

    def version_uri(self, model_name: str, version: int) -> str:
        """The URI of a version directory, as an InferenceService ``storageUri``."""
        ...


def open_store(uri: str) -> ModelStore:
    """Open the store at ``uri``: ``s3://bucket[/prefix]``, ``file:///path`` or a plain path.

    Raises:
        StoreError: When an S3 store is configured but unreachable or refuses the credentials.
    """
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise StoreError(f"store URI {uri!r} has no bucket: expected s3://<bucket>[/prefix]")
        return S3Store(parsed.netloc, parsed.path.strip("/"), S3Settings.from_env())
    return LocalStore(Path(uri.removeprefix("file://")))


def split_version_uri(storage_uri: str) -> tuple[str, str, int]:
    """Split ``<store>/<model>/<version>`` into ``(store_uri, model_name, version)``.

    Raises:
        ValueError: When the URI does not end in ``/<model>/<version>``.
    """
    parts = storage_uri.rstrip("/").rsplit("/", 2)
    if len(parts) != 3 or not parts[2].isdigit():
        raise ValueError(
            f"storageUri {storage_uri!r} does not name a model version: "
            "expected <store>/<model-name>/<version>"
        )
    return parts[0], parts[1], int(parts[2])


def fetch_version(storage_uri: str, dest: Path) -> tuple[Path, dict[str, Any]]:
    """Download the version at ``storage_uri`` and check its model file against its sha256.

    Returns:
        The local model file and the version's metadata.

    Raises:
        StoreError: When the version is missing or the file does not match its recorded sha256.
    """
    store_uri, model_name, version = split_version_uri(storage_uri)
    store = open_store(store_uri)
    store.download(model_name, version, dest)
    metadata = json.loads((dest / METADATA_FILE).read_text())
    model_path = dest / MODEL_FILE
    actual = sha256_file(model_path)
    if actual != metadata.get("sha256"):
        raise StoreError(
            f"{storage_uri}/{MODEL_FILE} has sha256 {actual}, but metadata.json records "
            f"{metadata.get('sha256')}: refusing to load a file that changed after upload"
        )
    return model_path, metadata


class LocalStore:
    """A store in a local directory (the embedded default)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.uri = str(self.root)

    def versions(self, model_name: str) -> list[int]:  # noqa: D102
        base = self.root / model_name
        if not base.is_dir():
            return []
        return sorted(
            int(p.name) for p in base.iterdir() if p.name.isdigit() and (p / METADATA_FILE).exists()
        )

    def publish(self, model_name: str, model_file: Path, metadata: dict[str, Any]) -> int:  # noqa: D102
        base = self.root / model_name
        base.mkdir(parents=True, exist_ok=True)
        existing = [int(p.name) for p in base.iterdir() if p.name.isdigit()]
        version = max(existing, default=0) + 1
        # Stage the files, then rename the whole directory: readers never see half a version,
        # and rename refuses to replace a non-empty directory a concurrent run may have made.
        staging = base / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            shutil.copyfile(model_file, staging / MODEL_FILE)
            (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))
            os.rename(staging, base / str(version))
        except OSError as err:
            shutil.rmtree(staging, ignore_errors=True)
            raise StoreError(f"could not write {base / str(version)}: {err}") from err
        return version

    def read_metadata(self, model_name: str, version: int) -> dict[str, Any]:  # noqa: D102
        path = self.root / model_name / str(version) / METADATA_FILE
        if not path.exists():
            raise StoreError(f"no version {version} of model {model_name!r} in {self.uri}")
        return dict(json.loads(path.read_text()))

    def download(self, model_name: str, version: int, dest: Path) -> Path:  # noqa: D102
        self.read_metadata(model_name, version)
        dest.mkdir(parents=True, exist_ok=True)
        for name in (MODEL_FILE, METADATA_FILE):
            shutil.copyfile(self.root / model_name / str(version) / name, dest / name)
        return dest

    def version_uri(self, model_name: str, version: int) -> str:  # noqa: D102
        # file://: KServe's webhook accepts only storageUri schemes it knows, not a bare path.
        return f"file://{self.uri}/{model_name}/{version}/"


class S3Store:
    """A store in an S3 bucket, through the ``minio`` client (MinIO, or any S3 endpoint)."""

    def __init__(self, bucket: str, prefix: str, settings: S3Settings) -> None:
        import urllib3
        from minio import Minio

        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.uri = f"s3://{bucket}/{prefix}".rstrip("/")
        self._endpoint = settings.endpoint
        # Short timeouts and few retries: an unreachable endpoint should fail in seconds,
        # not after minio's default of minutes of backoff.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=3, read=60),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[502, 503, 504]),
        )
        self._client = Minio(
            settings.endpoint,
            access_key=settings.access_key,
            secret_key=settings.secret_key,
            secure=settings.secure,
            region=settings.region,
            http_client=http,
        )
        self._check_bucket()

    def _check_bucket(self) -> None:
        from minio.error import S3Error

        try:
            exists = self._client.bucket_exists(self.bucket)
        except S3Error as err:
            raise StoreError(
                f"S3 endpoint {self._endpoint} refused access to bucket {self.bucket!r}: "
                f"{err.code} ({err.message}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ) from err
        except Exception as err:  # urllib3 raises several types for a dead endpoint
            raise StoreError(
                f"cannot reach S3 endpoint {self._endpoint}: {type(err).__name__}; "
                "check MLOPS_S3_ENDPOINT and that the server is running"
            ) from err
        if not exists:
            raise StoreError(
                f"bucket {self.bucket!r} does not exist at {self._endpoint}: create it first "
                "(the cluster's MinIO bucket job creates 'models')"
            )

    def _key(self, model_name: str, version: int, name: str = "") -> str:
        return f"{self.prefix}{model_name}/{version}/{name}"

    def versions(self, model_name: str) -> list[int]:  # noqa: D102
        found = []
        for obj in self._client.list_objects(
            self.bucket, prefix=f"{self.prefix}{model_name}/", recursive=True
        ):
            parts = (obj.object_name or "").split("/")
            if parts[-1] == METADATA_FILE and parts[-2].isdigit():
                found.append(int(parts[-2]))
        return sorted(found)

    def _taken_versions(self, model_name: str) -> list[int]:
        prefixes = self._client.list_objects(self.bucket, prefix=f"{self.prefix}{model_name}/")
        names = ((obj.object_name or "").rstrip("/").rsplit("/", 1)[-1] for obj in prefixes)
        return [int(n) for n in names if n.isdigit()]

    def publish(self, model_name: str, model_file: Path, metadata: dict[str, Any]) -> int:  # noqa: D102
        version = max(self._taken_versions(model_name), default=0) + 1
        body = json.dumps(metadata, indent=2, sort_keys=True).encode()
        model_key = self._key(model_name, version, MODEL_FILE)
        try:
            self._client.fput_object(self.bucket, model_key, str(model_file))
            # metadata.json last: its presence marks the version complete.
            self._client.put_object(
                self.bucket,
                self._key(model_name, version, METADATA_FILE),
                io.BytesIO(body),
                len(body),
                content_type="application/json",
            )
        except Exception as err:  # S3Error, OSError, or urllib3's errors for a dead endpoint
            # Best effort: a half-written version has no metadata.json, so it is never listed.
            with contextlib.suppress(Exception):
                self._client.remove_object(self.bucket, model_key)
            raise StoreError(
                f"could not write {self.version_uri(model_name, version)}: {err}"
            ) from err
        return version

    def read_metadata(self, model_name: str, version: int) -> dict[str, Any]:  # noqa: D102
        from minio.error import S3Error

        try:
            response = self._client.get_object(
                self.bucket, self._key(model_name, version, METADATA_FILE)
            )
        except S3Error as err:
            raise StoreError(
                f"no version {version} of model {model_name!r} in {self.uri}: {err.code}"
            ) from err
        try:
            return dict(json.loads(response.read()))
        finally:
            response.close()
            response.release_conn()

    def download(self, model_name: str, version: int, dest: Path) -> Path:  # noqa: D102
        self.read_metadata(model_name, version)
        dest.mkdir(parents=True, exist_ok=True)
        for name in (MODEL_FILE, METADATA_FILE):
            self._client.fget_object(
                self.bucket, self._key(model_name, version, name), str(dest / name)
            )
        return dest

    def version_uri(self, model_name: str, version: int) -> str:  # noqa: D102
        return f"{self.uri}/{model_name}/{version}/"

    def download_object(self, key: str, dest: Path) -> Path:
        """Download one object of the bucket (a dataset, say) to ``dest``.

        Raises:
            StoreError: When the object does not exist or cannot be read.
        """
        from minio.error import S3Error

        try:
            self._client.fget_object(self.bucket, key, str(dest))
        except S3Error as err:
            raise StoreError(
                f"cannot read s3://{self.bucket}/{key}: {err.code} ({err.message})"
            ) from err
        return dest

    def stat_object(self, key: str) -> None:
        """Check that an object exists.

        Raises:
            StoreError: When it does not, or cannot be read.
        """
        from minio.error import S3Error

        try:
            self._client.stat_object(self.bucket, key)
        except S3Error as err:
            where = f"s3://{self.bucket}/{key}"
            raise StoreError(f"cannot read {where}: {err.code} ({err.message})") from err
