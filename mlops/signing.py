"""Signatures of model versions: an HMAC-SHA256 under a key that is never in the model store.

Loading a ``model.joblib`` unpickles it, and unpickling runs code. The sha256 in
``metadata.json`` sits beside the model, so whoever can write the store can rewrite both. The
signature closes that gap: it covers the model name, the version number and the whole
``metadata.json`` (which holds the model file's sha256), and only a holder of the key can make
one. ``mlops.store.fetch_version`` checks it before anything is unpickled.

The key is ``MLOPS_SIGNING_KEY`` (in the cluster: from the pipeline's Secret), else the file
``<state dir>/signing.key``, created with mode 0600 by the first publish on this machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat
import uuid
from pathlib import Path
from typing import Any

from mlops.settings import signing_key_file

KEY_ENV = "MLOPS_SIGNING_KEY"
SIGNATURE_FIELD = "signature"
ALGORITHM = "hmac-sha256"
MIN_KEY_CHARS = 32
_MAKE_KEY = "python -c 'import secrets; print(secrets.token_hex(32))'"


class SignatureError(RuntimeError):
    """No usable key, or a version whose signature is missing or wrong; the message says why."""


def signing_key(create: bool = False, *, env: str = KEY_ENV, key_file: Path | None = None) -> bytes:
    """The signing key: ``MLOPS_SIGNING_KEY``, else the state directory's ``signing.key``.

    Args:
        create: Create the key file (mode 0600) when neither exists, as a first publish does.
        env: The variable holding the key (a named environment has its own, ``mlops.environments``).
        key_file: The key file when ``env`` is unset (default: the state directory's).

    Returns:
        The key bytes.

    Raises:
        SignatureError: When there is no key (and ``create`` is false), the key is shorter than
            32 characters, the key file is readable or writable by others, or a key file would
            be created inside a Kubernetes pod (it would vanish with the pod).
    """
    from_env = os.environ.get(env, "").strip()
    if from_env:
        return _checked(from_env, env)
    path = key_file or signing_key_file()
    if not path.exists():
        if not create:
            raise SignatureError(
                f"no signing key: {env} is not set and {path} does not exist; set "
                f"{env} to the key that signed the store's versions (or publish a version "
                "on this machine first)"
            )
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            raise SignatureError(
                f"{env} is not set: in a cluster set it from the pipeline's Secret (key "
                f"{env}); a key file made inside a pod would vanish with the pod"
            )
        _create_key_file(path)
    return _read_key_file(path)


def _checked(key: str, where: str) -> bytes:
    if len(key) < MIN_KEY_CHARS:
        raise SignatureError(
            f"the signing key in {where} has {len(key)} characters, fewer than "
            f"{MIN_KEY_CHARS}; make one with: {_MAKE_KEY}"
        )
    return key.encode()


def _create_key_file(path: Path) -> None:
    # Written whole under a private name, then linked into place: a concurrent first publish
    # either wins the link or reads the winner's key, never half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(staging, path)
    finally:
        staging.unlink()


def _read_key_file(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SignatureError(
            f"{path} is open to other users (mode {stat.filemode(mode)}): anyone who can read "
            f"it can sign models; run chmod 600 {path}"
        )
    return _checked(path.read_text().strip(), str(path))


def key_id(key: bytes) -> str:
    """A short, non-secret name of a key, to tell two keys apart in error messages."""
    return hashlib.sha256(b"mlops-signing-key-id:" + key).hexdigest()[:16]


def _digest(metadata: dict[str, Any], model_name: str, version: int, key: bytes) -> str:
    unsigned = {k: v for k, v in metadata.items() if k != SIGNATURE_FIELD}
    # The name and number are signed too: a signed version copied to another number or model
    # (an old, bad model replayed as the newest) does not verify.
    message = json.dumps(
        {"model_name": model_name, "version": version, "metadata": unsigned},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
    )
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def sign(metadata: dict[str, Any], model_name: str, version: int, key: bytes) -> dict[str, Any]:
    """Return ``metadata`` with its ``signature`` for version ``version`` of ``model_name``.

    Raises:
        ValueError: When the metadata holds a value JSON cannot carry (NaN, infinity, objects).
    """
    signature = {
        "algorithm": ALGORITHM,
        "key_id": key_id(key),
        "value": _digest(metadata, model_name, version, key),
    }
    return {**metadata, SIGNATURE_FIELD: signature}


def verify(metadata: dict[str, Any], model_name: str, version: int, key: bytes, where: str) -> None:
    """Check the signature of a version's metadata before its model is loaded.

    Args:
        metadata: The parsed ``metadata.json``.
        model_name: The model the version claims to belong to.
        version: Its version number.
        key: The signing key.
        where: The version's URI, for the message.

    Raises:
        SignatureError: When the signature is missing, made with another key, or wrong.
    """
    signature = metadata.get(SIGNATURE_FIELD)
    if not isinstance(signature, dict) or not isinstance(signature.get("value"), str):
        raise SignatureError(
            f"{where}metadata.json has no signature: refusing to load an unsigned model "
            "(publish it again with the current mlops, which signs every version)"
        )
    expected = _digest(metadata, model_name, version, key)
    if hmac.compare_digest(expected, signature["value"]):
        return
    if signature.get("key_id") != key_id(key):
        raise SignatureError(
            f"{where}metadata.json was signed with key {signature.get('key_id')}, but this "
            f"machine's key is {key_id(key)}: set {KEY_ENV} to the key that published it"
        )
    raise SignatureError(
        f"{where}metadata.json does not match its signature: the version was changed after "
        "it was published; refusing to load it"
    )
