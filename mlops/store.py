"""The model store: ``<root>/<model-name>/<version>/{model.joblib,metadata.json}``.

The same layout lives in a local directory (the embedded default, here) or in an S3 bucket
(MinIO in the cluster; ``mlops.s3_store``), so an InferenceService's ``storageUri`` can point at
the version directory either way. A version is written once: its number is claimed atomically,
nothing is ever replaced or deleted, and a version is complete only when its ``metadata.json``
(written last, signed by ``mlops.signing``) exists. ``fetch_version`` is the one way to load a
version: it checks the signature and the sha256 before any caller unpickles the model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from mlops import signing
from mlops.settings import S3Settings

MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
# Each failed claim means another publisher took that number, so N concurrent publishers
# need at most N attempts; the bound only stops a runaway loop.
MAX_CLAIM_ATTEMPTS = 64
# S3 claims live under <model>/.claims/<version>; a model name (a Kubernetes name) has no dot
# in front, so it never collides.
CLAIMS_DIR = ".claims"
# Write-once markers beside the versions (a release's claim of its source, ``mlops.release``):
# <model>/.markers/<name>, never inside a version directory KServe downloads whole.
MARKERS_DIR = ".markers"
_MARKER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")


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

    def publish(
        self,
        model_name: str,
        model_file: Path,
        metadata: dict[str, Any],
        signing_key: bytes | None = None,
    ) -> int:
        """Write a new version and return its number; never overwrites one.

        ``signing_key`` signs it (default: this machine's key, ``mlops.signing``).
        """
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

    def create_marker(self, model_name: str, name: str, body: bytes) -> bool:
        """Create the marker ``name`` of a model once; ``False`` when it exists already.

        The check and the write are one atomic step, as a version's claim is.
        """
        ...

    def read_marker(self, model_name: str, name: str) -> bytes | None:
        """The body of a marker, or ``None`` when there is none."""
        ...

    def marker_uri(self, model_name: str, name: str) -> str:
        """Where a marker lives (for a message that names it)."""
        ...


def open_store(uri: str, s3_settings: S3Settings | None = None) -> ModelStore:
    """Open the store at ``uri``: ``s3://bucket[/prefix]``, ``file:///path`` or a plain path.

    ``s3_settings`` reach an S3 store (default: ``S3Settings.from_env()``).

    Raises:
        StoreError: When an S3 store is configured but unreachable or refuses the credentials.
    """
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise StoreError(f"store URI {uri!r} has no bucket: expected s3://<bucket>[/prefix]")
        from mlops.s3_store import S3Store

        settings = s3_settings or S3Settings.from_env()
        return S3Store(parsed.netloc, parsed.path.strip("/"), settings)
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


def parse_metadata(raw: bytes | str, where: str) -> dict[str, Any]:
    """Parse a ``metadata.json``; ``where`` names it in the error.

    Raises:
        StoreError: When it is not a JSON object.
    """
    damaged = (
        "the version is damaged; publish a new version (versions are never rewritten) or "
        "restore the file from a backup"
    )
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StoreError(f"{where} is not valid JSON ({err}): {damaged}") from err
    if not isinstance(parsed, dict):
        raise StoreError(f"{where} holds a {type(parsed).__name__}, not an object: {damaged}")
    return parsed


def metadata_bytes(metadata: dict[str, Any]) -> bytes:
    """The bytes of a ``metadata.json``: sorted keys, strict JSON (no NaN or infinity).

    Raises:
        StoreError: When the metadata holds a value JSON cannot carry.
    """
    try:
        return json.dumps(metadata, indent=2, sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError) as err:
        raise StoreError(f"metadata cannot be written as JSON: {err}") from err


def claim_next_version(
    taken: Callable[[], list[int]], claim: Callable[[int], bool], where: str
) -> int:
    """Claim the number after the highest taken one; on a lost race, list again and retry.

    Args:
        taken: Every number in use, complete or not (a half-written version keeps its number).
        claim: Atomically claims a number; ``False`` when another publisher holds it already.
        where: The store (and model), for the message.

    Raises:
        StoreError: When ``MAX_CLAIM_ATTEMPTS`` claims in a row were lost.
    """
    for _ in range(MAX_CLAIM_ATTEMPTS):
        version = max(taken(), default=0) + 1
        if claim(version):
            return version
    raise StoreError(
        f"could not claim a version number in {where} after {MAX_CLAIM_ATTEMPTS} attempts: "
        "other publishers took every one; try again"
    )


def checked_signing_key(
    model_file: Path, metadata: dict[str, Any], signing_key: bytes | None
) -> bytes:
    """What every ``publish`` checks before it writes anything; the key it signs with.

    Args:
        model_file: The model file to publish: it must be a file.
        metadata: Its metadata: it must serialize (``metadata_bytes``).
        signing_key: The caller's key, or ``None`` for this machine's (created on a first
            local publish).

    Raises:
        StoreError: When the file is missing, the metadata does not serialize, or no key can
            be had (the message says how to set one).
    """
    if not model_file.is_file():
        raise StoreError(f"could not publish {model_file}: no such file")
    metadata_bytes(metadata)
    if signing_key:
        return signing_key
    try:
        return signing.signing_key(create=True)
    except (signing.SignatureError, OSError) as err:
        raise StoreError(f"cannot sign the new version: {err}") from err


def check_marker_name(name: str) -> str:
    """A marker's name is a lower-case file name; return it.

    Raises:
        ValueError: When it is not.
    """
    if not _MARKER_NAME.match(name):
        raise ValueError(f"marker name {name!r} is not [a-z0-9._-], at most 128 characters")
    return name


def fetch_version(storage_uri: str, dest: Path) -> tuple[Path, dict[str, Any]]:
    """Download a version and check it before anyone unpickles it.

    The signature of ``metadata.json`` (``mlops.signing``: a key that is not in the store) is
    checked first, then the model file's sha256 against the signed metadata.

    Returns:
        The local model file and the version's metadata.

    Raises:
        StoreError: When the version is missing or damaged, unsigned or wrongly signed, or the
            file does not match its recorded sha256.
    """
    store_uri, model_name, version = split_version_uri(storage_uri)
    store = open_store(store_uri)
    try:
        key = signing.signing_key()
    except signing.SignatureError as err:
        where = store.version_uri(model_name, version)
        raise StoreError(f"cannot check {where}: {err}") from err
    return fetch_checked(store, model_name, version, dest, key)


def fetch_checked(
    store: ModelStore, model_name: str, version: int, dest: Path, key: bytes
) -> tuple[Path, dict[str, Any]]:
    """Download a version of ``store`` and check its signature under ``key``, then its sha256.

    ``fetch_version`` with a given store and key, as a release between two stores needs.

    Raises:
        StoreError: As ``fetch_version``.
    """
    where = store.version_uri(model_name, version)
    store.download(model_name, version, dest)
    metadata = parse_metadata((dest / METADATA_FILE).read_bytes(), f"{where}{METADATA_FILE}")
    try:
        signing.verify(metadata, model_name, version, key, where)
    except signing.SignatureError as err:
        raise StoreError(str(err)) from err
    recorded = metadata.get("sha256")
    if not isinstance(recorded, str) or not recorded:
        raise StoreError(
            f"{where}{METADATA_FILE} records no sha256 of {MODEL_FILE}: refusing to load a "
            "file that cannot be checked; publish the model again"
        )
    model_path = dest / MODEL_FILE
    actual = sha256_file(model_path)
    if actual != recorded:
        raise StoreError(
            f"{where}{MODEL_FILE} has sha256 {actual}, but metadata.json records "
            f"{recorded}: refusing to load a file that changed after upload"
        )
    return model_path, metadata


class LocalStore:
    """A store in a local directory (the embedded default).

    A version number is claimed by creating its directory (``mkdir`` is atomic and fails when
    the directory exists), so concurrent publishers never share one; ``metadata.json`` is
    linked into place last (a link never replaces a file) and marks the version complete.
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.uri = str(self.root)

    def _model_dir(self, model_name: str) -> Path:
        base = self.root / model_name
        if base.exists() and not base.is_dir():
            raise StoreError(f"{base} is a file, not a model directory: move it out of the store")
        return base

    def versions(self, model_name: str) -> list[int]:  # noqa: D102
        base = self._model_dir(model_name)
        if not base.is_dir():
            return []
        try:
            return sorted(
                int(p.name)
                for p in base.iterdir()
                if p.name.isdigit() and (p / METADATA_FILE).exists()
            )
        except OSError as err:
            raise StoreError(f"cannot list {base}: {err}") from err

    def _taken_versions(self, base: Path) -> list[int]:
        # Every numbered directory, complete or not: a half-written version keeps its number.
        return [int(p.name) for p in base.iterdir() if p.name.isdigit()]

    def _claim_version(self, base: Path) -> int:
        def make_directory(version: int) -> bool:
            try:
                (base / str(version)).mkdir()
            except FileExistsError:
                return False  # another publisher took it between the listing and the mkdir
            return True

        return claim_next_version(lambda: self._taken_versions(base), make_directory, str(base))

    def publish(  # noqa: D102
        self,
        model_name: str,
        model_file: Path,
        metadata: dict[str, Any],
        signing_key: bytes | None = None,
    ) -> int:
        key = checked_signing_key(model_file, metadata, signing_key)
        base = self._model_dir(model_name)
        try:
            base.mkdir(parents=True, exist_ok=True)
            version = self._claim_version(base)
        except OSError as err:
            raise StoreError(f"could not write {base}: {err}") from err
        directory = base / str(version)
        body = metadata_bytes(signing.sign(metadata, model_name, version, key))
        staged = directory / f".{METADATA_FILE}.{uuid.uuid4().hex}"
        try:
            shutil.copyfile(model_file, directory / MODEL_FILE)
            staged.write_bytes(body)
            os.link(staged, directory / METADATA_FILE)
        except OSError as err:
            # The directory stays: it is this publisher's, never listed, never reused.
            raise StoreError(f"could not write {directory}: {err}") from err
        finally:
            with contextlib.suppress(OSError):
                staged.unlink()
        return version

    def read_metadata(self, model_name: str, version: int) -> dict[str, Any]:  # noqa: D102
        path = self.root / model_name / str(version) / METADATA_FILE
        if not path.exists():
            raise StoreError(f"no version {version} of model {model_name!r} in {self.uri}")
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise StoreError(f"cannot read {path}: {err}") from err
        return parse_metadata(raw, str(path))

    def download(self, model_name: str, version: int, dest: Path) -> Path:  # noqa: D102
        self.read_metadata(model_name, version)
        dest.mkdir(parents=True, exist_ok=True)
        for name in (MODEL_FILE, METADATA_FILE):
            source = self.root / model_name / str(version) / name
            try:
                shutil.copyfile(source, dest / name)
            except OSError as err:
                raise StoreError(f"cannot read {source}: {err}") from err
        return dest

    def version_uri(self, model_name: str, version: int) -> str:  # noqa: D102
        # file://: KServe's webhook accepts only storageUri schemes it knows, not a bare path.
        return f"file://{self.uri}/{model_name}/{version}/"

    def _marker_path(self, model_name: str, name: str) -> Path:
        return self._model_dir(model_name) / MARKERS_DIR / check_marker_name(name)

    def create_marker(self, model_name: str, name: str, body: bytes) -> bool:  # noqa: D102
        path = self._marker_path(model_name, name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Written whole under a staging name, then linked: a link never replaces a file,
            # and no reader ever sees a half-written marker.
            staged = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
            staged.write_bytes(body)
            try:
                os.link(staged, path)
            except FileExistsError:
                return False
            finally:
                staged.unlink()
        except OSError as err:
            raise StoreError(f"could not write {path}: {err}") from err
        return True

    def read_marker(self, model_name: str, name: str) -> bytes | None:  # noqa: D102
        path = self._marker_path(model_name, name)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StoreError(f"cannot read {path}: {err}") from err

    def marker_uri(self, model_name: str, name: str) -> str:  # noqa: D102
        return str(self._marker_path(model_name, name))
