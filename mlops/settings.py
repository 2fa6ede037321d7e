"""Where things live: the project's state directory, the model store, MLflow and the image.

Every setting has a local default under ``.mlops/`` (the *embedded default*) and an environment
variable that overrides it, so the same code runs on a laptop and in the cluster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL_NAME = "breast-cancer"
# The one project image every component runs from; `make image` builds it, `kind load` ships it.
DEFAULT_IMAGE = "localhost/kfp-kserve-sklearn:0.1.0"


def state_dir() -> Path:
    """The directory holding the local store, MLflow and the local InferenceService state."""
    return Path(os.environ.get("MLOPS_HOME", ".mlops")).resolve()


def component_image() -> str:
    """The project image the compiled components name (``MLOPS_IMAGE`` overrides)."""
    return os.environ.get("MLOPS_IMAGE", DEFAULT_IMAGE)


def default_store_uri() -> str:
    """``MLOPS_STORE_URI`` (``s3://bucket`` or a path), else ``<state dir>/store``."""
    return os.environ.get("MLOPS_STORE_URI") or str(state_dir() / "store")


def signing_key_file() -> Path:
    """Where the local signing key of model versions lives when ``MLOPS_SIGNING_KEY`` is unset.

    It sits in the state directory, never in the model store: whoever can write the store must
    not be able to sign a version.
    """
    return state_dir() / "signing.key"


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else a SQLite file in the state directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{state_dir() / 'mlflow.db'}"


@dataclass(frozen=True)
class S3Settings:
    """How to reach an S3-compatible endpoint (MinIO), read from the environment.

    Attributes:
        endpoint: ``host:port`` or a URL such as ``http://minio:9000``.
        access_key: The access key id.
        secret_key: The secret key.
        secure: Whether to use HTTPS.
        region: The bucket region, if the server needs one.
    """

    endpoint: str
    access_key: str | None
    secret_key: str | None
    secure: bool
    region: str | None

    @classmethod
    def from_env(cls, endpoint: str | None = None, credentials_prefix: str = "") -> S3Settings:
        """Read ``MLOPS_S3_ENDPOINT``/``AWS_*`` variables and check they are complete.

        Args:
            endpoint: The endpoint, instead of ``MLOPS_S3_ENDPOINT`` (a named environment's).
            credentials_prefix: Read the keys from ``<prefix>AWS_ACCESS_KEY_ID`` and
                ``<prefix>AWS_SECRET_ACCESS_KEY`` (a named environment's own credentials).

        Raises:
            ValueError: When the endpoint is missing or only one of the two keys is set.
        """
        raw = (
            endpoint
            or os.environ.get("MLOPS_S3_ENDPOINT")
            or os.environ.get("AWS_ENDPOINT_URL")
            or ""
        )
        if not raw:
            raise ValueError(
                "MLOPS_S3_ENDPOINT is not set: set it to the S3 endpoint, "
                "e.g. MLOPS_S3_ENDPOINT=http://localhost:9000"
            )
        secure = raw.startswith("https://") or os.environ.get("MLOPS_S3_SECURE", "") == "1"
        endpoint = raw.removeprefix("https://").removeprefix("http://").rstrip("/")
        access_key = os.environ.get(f"{credentials_prefix}AWS_ACCESS_KEY_ID")
        secret_key = os.environ.get(f"{credentials_prefix}AWS_SECRET_ACCESS_KEY")
        if bool(access_key) != bool(secret_key):
            raise ValueError(
                f"set both {credentials_prefix}AWS_ACCESS_KEY_ID and "
                f"{credentials_prefix}AWS_SECRET_ACCESS_KEY, or neither (anonymous access)"
            )
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return cls(endpoint, access_key, secret_key, secure, region)
