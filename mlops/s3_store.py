"""The model store on S3 (MinIO in the cluster, or any S3 endpoint), through ``minio``.

A version number is claimed with a conditional create of ``<model>/.claims/<version>``
(``If-None-Match: *``, which S3 and MinIO apply atomically): of concurrent publishers exactly one
gets each number. The model file and then ``metadata.json`` are created the same way, so nothing
is ever overwritten, and nothing is ever deleted.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from mlops import signing
from mlops.settings import S3Settings
from mlops.store import (
    CLAIMS_DIR,
    MARKERS_DIR,
    METADATA_FILE,
    MODEL_FILE,
    StoreError,
    check_marker_name,
    checked_signing_key,
    claim_next_version,
    metadata_bytes,
    parse_metadata,
)


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
        try:
            for obj in self._client.list_objects(
                self.bucket, prefix=f"{self.prefix}{model_name}/", recursive=True
            ):
                parts = (obj.object_name or "").split("/")
                if parts[-1] == METADATA_FILE and parts[-2].isdigit():
                    found.append(int(parts[-2]))
        except Exception as err:  # S3Error or urllib3's errors for a dead endpoint
            raise StoreError(
                f"cannot list {self.uri}/{model_name}/ at {self._endpoint}: {err}"
            ) from err
        return sorted(found)

    def _claim_key(self, model_name: str, version: int) -> str:
        # Beside the version directories, not in one: KServe downloads a version's whole prefix.
        return f"{self.prefix}{model_name}/{CLAIMS_DIR}/{version}"

    def _taken_versions(self, model_name: str) -> list[int]:
        # Claimed numbers and every numbered prefix (a half-written version keeps its number).
        taken = []
        for prefix in (f"{self.prefix}{model_name}/", f"{self.prefix}{model_name}/{CLAIMS_DIR}/"):
            for obj in self._client.list_objects(self.bucket, prefix=prefix):
                name = (obj.object_name or "").rstrip("/").rsplit("/", 1)[-1]
                if name.isdigit():
                    taken.append(int(name))
        return taken

    def _create(self, key: str, data: bytes, content_type: str) -> bool:
        """PUT ``key`` only if it does not exist (``If-None-Match: *``); False when it does.

        minio-py's public ``put_object`` turns extra headers into ``x-amz-meta-*`` user
        metadata, so the conditional header goes through its ``_put_object`` (one PUT, the
        request ``put_object`` itself sends for small objects). S3 and MinIO make the check
        and the write one atomic step; a 412 means another writer created the key first.
        """
        from minio.error import S3Error

        try:
            self._client._put_object(
                self.bucket,
                key,
                data,
                headers={"If-None-Match": "*", "Content-Type": content_type},
            )
        except S3Error as err:
            if err.code != "PreconditionFailed":
                raise
            # A retried PUT whose first attempt landed also gets 412: then the object is ours.
            return self._object_bytes(key) == data
        return True

    def _object_bytes(self, key: str) -> bytes:
        response = self._client.get_object(self.bucket, key)
        try:
            return bytes(response.read())
        finally:
            response.close()
            response.release_conn()

    def _claim_version(self, model_name: str) -> int:
        claim = json.dumps({"writer": uuid.uuid4().hex}).encode()
        return claim_next_version(
            lambda: self._taken_versions(model_name),
            lambda version: self._create(
                self._claim_key(model_name, version), claim, "application/json"
            ),
            f"{self.uri}/{model_name}",
        )

    def publish(  # noqa: D102
        self,
        model_name: str,
        model_file: Path,
        metadata: dict[str, Any],
        signing_key: bytes | None = None,
    ) -> int:
        key = checked_signing_key(model_file, metadata, signing_key)
        # Single PUTs (S3 allows 5 GB): a conditional create cannot go through minio-py's
        # multipart upload, whose completion takes no extra headers.
        model_bytes = model_file.read_bytes()
        try:
            version = self._claim_version(model_name)
        except StoreError:
            raise
        except Exception as err:  # S3Error, or urllib3's errors for a dead endpoint
            raise StoreError(f"could not claim a version in {self.uri}: {err}") from err
        body = metadata_bytes(signing.sign(metadata, model_name, version, key))
        where = self.version_uri(model_name, version)
        try:
            # metadata.json last: its presence marks the version complete. Nothing is deleted
            # on failure: the claim keeps the number, and a version without metadata.json is
            # never listed; deleting could only ever remove what another writer relies on.
            for name, data, content_type in (
                (MODEL_FILE, model_bytes, "application/octet-stream"),
                (METADATA_FILE, body, "application/json"),
            ):
                if not self._create(self._key(model_name, version, name), data, content_type):
                    raise StoreError(
                        f"{where}{name} already exists although this publisher claimed "
                        f"version {version}: something writes the store without claiming"
                    )
        except StoreError:
            raise
        except Exception as err:  # S3Error, OSError, or urllib3's errors for a dead endpoint
            raise StoreError(f"could not write {where}: {err}") from err
        return version

    def read_metadata(self, model_name: str, version: int) -> dict[str, Any]:  # noqa: D102
        from minio.error import S3Error

        key = self._key(model_name, version, METADATA_FILE)
        try:
            raw = self._object_bytes(key)
        except S3Error as err:
            raise StoreError(
                f"no version {version} of model {model_name!r} in {self.uri}: {err.code}"
            ) from err
        except Exception as err:  # urllib3's errors for a dead endpoint
            raise StoreError(f"cannot read s3://{self.bucket}/{key}: {err}") from err
        return parse_metadata(raw, f"s3://{self.bucket}/{key}")

    def download(self, model_name: str, version: int, dest: Path) -> Path:  # noqa: D102
        self.read_metadata(model_name, version)
        dest.mkdir(parents=True, exist_ok=True)
        for name in (MODEL_FILE, METADATA_FILE):
            key = self._key(model_name, version, name)
            try:
                self._client.fget_object(self.bucket, key, str(dest / name))
            except Exception as err:  # S3Error (NoSuchKey), or a dead endpoint
                raise StoreError(f"cannot read s3://{self.bucket}/{key}: {err}") from err
        return dest

    def version_uri(self, model_name: str, version: int) -> str:  # noqa: D102
        return f"{self.uri}/{model_name}/{version}/"

    def _marker_key(self, model_name: str, name: str) -> str:
        return f"{self.prefix}{model_name}/{MARKERS_DIR}/{check_marker_name(name)}"

    def create_marker(self, model_name: str, name: str, body: bytes) -> bool:  # noqa: D102
        key = self._marker_key(model_name, name)
        try:
            return self._create(key, body, "application/json")
        except Exception as err:  # S3Error, or urllib3's errors for a dead endpoint
            raise StoreError(f"could not write s3://{self.bucket}/{key}: {err}") from err

    def read_marker(self, model_name: str, name: str) -> bytes | None:  # noqa: D102
        key = self._marker_key(model_name, name)
        if not self.object_exists(key):
            return None
        try:
            return self._object_bytes(key)
        except Exception as err:  # S3Error, or urllib3's errors for a dead endpoint
            raise StoreError(f"cannot read s3://{self.bucket}/{key}: {err}") from err

    def marker_uri(self, model_name: str, name: str) -> str:  # noqa: D102
        return f"s3://{self.bucket}/{self._marker_key(model_name, name)}"

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

    def object_exists(self, key: str) -> bool:
        """Whether an object exists.

        Raises:
            StoreError: When the bucket cannot be read.
        """
        from minio.error import S3Error

        try:
            self._client.stat_object(self.bucket, key)
        except S3Error as err:
            if err.code in ("NoSuchKey", "NoSuchObject"):
                return False
            raise StoreError(f"cannot read s3://{self.bucket}/{key}: {err.code}") from err
        return True

    def create_object_from_file(self, key: str, path: Path) -> None:
        """Upload a file as a new object, streamed; refuse a key that exists.

        The file is streamed (multipart when large), which takes no ``If-None-Match``; the
        existence check before it leaves a race only between two writers of the same new key.

        Raises:
            FileExistsError: When the object exists.
            StoreError: When it cannot be written.
        """
        where = f"s3://{self.bucket}/{key}"
        if self.object_exists(key):
            raise FileExistsError(f"{where} exists: it is never overwritten; choose another key")
        try:
            self._client.fput_object(self.bucket, key, str(path))
        except Exception as err:  # S3Error, or urllib3's errors for a dead endpoint
            raise StoreError(f"could not write {where}: {err}") from err
