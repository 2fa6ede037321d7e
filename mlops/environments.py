"""Named environments (``dev``, ``prod`` ...): each one's store, MLflow, deploy target and key.

They come from one YAML file: ``--environments PATH``, else ``MLOPS_ENVIRONMENTS``, else
``environments.yaml`` in the working directory. Without a file the local default has two:

- ``dev`` is what ``mlops run`` uses today: the state directory (``.mlops/``, or
  ``MLOPS_HOME``), its store and MLflow (or ``MLOPS_STORE_URI`` / ``MLFLOW_TRACKING_URI``) and
  its signing key (``MLOPS_SIGNING_KEY``, else ``.mlops/signing.key``);
- ``prod`` is a second state directory, ``.mlops/prod/``, with its own store, MLflow database,
  local InferenceService and signing key (``MLOPS_PROD_SIGNING_KEY``, else
  ``.mlops/prod/signing.key``). ``MLOPS_HOME=.mlops/prod mlops serve`` serves it.

The file is checked at the edge: an unknown or missing field, a wrong target or a bad value is
one error naming the environment and the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mlops import signing
from mlops.settings import default_store_uri, default_tracking_uri, state_dir

ENVIRONMENTS_ENV = "MLOPS_ENVIRONMENTS"
DEFAULT_FILE = "environments.yaml"
# The ServiceAccount manifests/ creates with the S3 Secret KServe's storage initializer reads.
CLUSTER_SERVICE_ACCOUNT = "kserve-minio-sa"
_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,30}$"


class EnvironmentConfigError(ValueError):
    """The environments file or an environment's settings are wrong; the message says which."""


class Environment(BaseModel):
    """One environment: where its versions live, where it registers and deploys them.

    Attributes:
        name: The environment's name (``dev``, ``prod`` ...).
        store: Its model store: a directory or ``s3://bucket[/prefix]``.
        tracking_uri: Its MLflow tracking (and registry) URI.
        target: ``local`` (a state directory read by ``mlops serve``) or ``kubernetes``.
        namespace: The namespace of its InferenceService (kubernetes target).
        state_dir: Its local state directory: the local InferenceService and the key file.
        service_account: The predictor's ServiceAccount (kubernetes target; S3 credentials).
        canary_percent: The traffic share a released version gets while another one serves.
        signing_key_env: The variable holding the key that signs its versions; when unset,
            ``<state_dir>/signing.key``.
        s3_endpoint: Its S3 endpoint, when it differs from ``MLOPS_S3_ENDPOINT``.
        s3_credentials_prefix: Read its S3 keys from ``<prefix>AWS_ACCESS_KEY_ID`` and
            ``<prefix>AWS_SECRET_ACCESS_KEY`` (``""``: the plain ``AWS_*`` variables).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME_PATTERN)
    store: str = Field(min_length=1)
    tracking_uri: str = Field(min_length=1)
    target: Literal["local", "kubernetes"] = "local"
    namespace: str = Field(default="default", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    state_dir: Path
    service_account: str | None = None
    canary_percent: int = Field(default=10, ge=0, le=100)
    signing_key_env: str = Field(default=signing.KEY_ENV, pattern=r"^[A-Z_][A-Z0-9_]*$")
    s3_endpoint: str | None = None
    s3_credentials_prefix: str = Field(default="", pattern=r"^([A-Z_][A-Z0-9_]*)?$")

    @field_validator("store")
    @classmethod
    def _store_has_a_bucket(cls, value: str) -> str:
        if value.startswith("s3://") and not value.removeprefix("s3://").strip("/"):
            raise ValueError("an S3 store needs a bucket: s3://<bucket>[/prefix]")
        return value

    @property
    def predictor_service_account(self) -> str | None:
        """The predictor's ServiceAccount: in a cluster, the one with the store's S3 Secret."""
        if self.service_account or self.target == "local":
            return self.service_account
        return CLUSTER_SERVICE_ACCOUNT

    def signing_key(self, create: bool = False) -> bytes:
        """The key that signs (and checks) this environment's versions.

        Args:
            create: Create ``<state_dir>/signing.key`` when neither it nor the variable exists.

        Raises:
            SignatureError: When there is no usable key; the message names the variable.
        """
        return signing.signing_key(
            create, env=self.signing_key_env, key_file=self.state_dir / "signing.key"
        )

    def open_store(self) -> Any:
        """Open this environment's model store (``mlops.store.ModelStore``).

        Raises:
            StoreError: When an S3 store cannot be reached or refuses the credentials.
            ValueError: When its S3 settings are incomplete.
        """
        from mlops.settings import S3Settings
        from mlops.store import open_store

        if not self.store.startswith("s3://"):
            return open_store(self.store)
        settings = S3Settings.from_env(self.s3_endpoint, self.s3_credentials_prefix)
        return open_store(self.store, settings)


def default_environments() -> dict[str, Environment]:
    """The local default without a file: ``dev`` as ``mlops run`` uses it, ``prod`` beside it."""
    home = state_dir()
    prod_home = home / "prod"
    return {
        "dev": Environment(
            name="dev",
            store=default_store_uri(),
            tracking_uri=default_tracking_uri(),
            state_dir=home,
        ),
        "prod": Environment(
            name="prod",
            store=str(prod_home / "store"),
            tracking_uri=f"sqlite:///{prod_home / 'mlflow.db'}",
            state_dir=prod_home,
            signing_key_env="MLOPS_PROD_SIGNING_KEY",
        ),
    }


def environments_file(path: str | Path | None = None) -> Path | None:
    """The file to read: ``path``, else ``MLOPS_ENVIRONMENTS``, else ``./environments.yaml``.

    Returns ``None`` when none is given and ``./environments.yaml`` does not exist.
    """
    chosen = path or os.environ.get(ENVIRONMENTS_ENV)
    if chosen:
        return Path(chosen)
    found = Path(DEFAULT_FILE)
    return found if found.is_file() else None


def load_environments(path: str | Path | None = None) -> dict[str, Environment]:
    """Read the environments file (see ``environments_file``), or the local default.

    Relative paths in the file (``store``, ``state_dir``) are relative to the file's directory.
    An environment without ``state_dir`` gets ``<MLOPS_HOME>/<name>``.

    Raises:
        EnvironmentConfigError: When the file is missing, is not YAML, or an environment is
            wrong; the message names the file, the environment and the field.
    """
    import yaml

    source = environments_file(path)
    if source is None:
        return default_environments()
    try:
        raw = yaml.safe_load(source.read_text())
    except OSError as err:
        raise EnvironmentConfigError(f"cannot read the environments file {source}: {err}") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise EnvironmentConfigError(f"{source} is not valid YAML: {problem}{at}") from err
    if not isinstance(raw, dict) or not isinstance(raw.get("environments"), dict):
        raise EnvironmentConfigError(
            f"{source}: expected a mapping 'environments:' of names to settings "
            "(store, tracking_uri, target, namespace ...)"
        )
    if set(raw) != {"environments"}:
        extra = sorted(str(k) for k in set(raw) - {"environments"})
        raise EnvironmentConfigError(
            f"{source}: unknown top-level field(s) {extra}: only 'environments'"
        )
    return {
        str(name): _environment(str(name), fields, source)
        for name, fields in raw["environments"].items()
    }


def _environment(name: str, fields: Any, source: Path) -> Environment:
    where = f"{source}: environments.{name}"
    if not isinstance(fields, dict):
        raise EnvironmentConfigError(f"{where}: expected a mapping of settings, got {fields!r}")
    base = source.resolve().parent
    values = {**fields, "name": name}
    values.setdefault("state_dir", state_dir() / name)
    values["state_dir"] = base / Path(str(values["state_dir"]))
    store = values.get("store")
    if isinstance(store, str) and store and "://" not in store:
        values["store"] = str(base / store)
    try:
        return Environment.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(settings)"
        got = "" if first["type"] == "missing" else f" (got {first.get('input')!r})"
        raise EnvironmentConfigError(f"{where}.{field}: {first['msg']}{got}") from err


def environment(name: str, path: str | Path | None = None) -> Environment:
    """The environment ``name`` (see ``load_environments``).

    Raises:
        EnvironmentConfigError: When the file is wrong or defines no environment ``name``.
    """
    found = load_environments(path)
    if name not in found:
        source = environments_file(path) or "the local default"
        raise EnvironmentConfigError(
            f"no environment {name!r} in {source}: it defines {', '.join(sorted(found))}"
        )
    return found[name]
