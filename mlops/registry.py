"""MLflow tracking and registry: every run is logged, deployed versions carry aliases.

The registered model's versions are tagged with the store version and its ``storage_uri``;
the alias ``champion`` names the version that takes all production traffic, ``challenger``
the one in canary.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHAMPION = "champion"
CHALLENGER = "challenger"
_STORE_VERSION_TAG = "store_version"
_STORAGE_URI_TAG = "storage_uri"
# On a version a run published but never deployed (``register_version_once``): never an alias.
ABANDONED_TAG = "abandoned"


def _is_missing(err: Exception) -> bool:
    """Whether MLflow said "no such model/alias" (not: the server is down, access denied ...).

    Only that may read as "no champion": an unreachable tracking server must fail the step
    rather than let a model deploy without the comparison.
    """
    return getattr(err, "error_code", None) in (
        "RESOURCE_DOES_NOT_EXIST",
        "INVALID_PARAMETER_VALUE",
    )


# SQLite databases this process has seen created (or found complete), by tracking URI.
_READY_DATABASES: set[str] = set()


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    with _creating_local_database(tracking_uri) as first_use:
        # The constructor opens (and creates, if new) the registry's tables of a SQLite URI.
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        if first_use:
            client.search_experiments(max_results=1)  # the tracking store's tables too
    return client


def prepare_local_database(tracking_uri: str) -> None:
    """Create the tables of a new local (SQLite) MLflow database now; nothing for a server.

    MLflow creates and migrates a new database on first use, which takes seconds; ``mlops run``
    calls this in the background while the first steps run, and the step that first needs
    MLflow waits for it (see ``_creating_local_database``).
    """
    if tracking_uri.startswith("sqlite:///"):
        _client(tracking_uri)


@contextlib.contextmanager
def _creating_local_database(tracking_uri: str) -> Iterator[bool]:
    """Let one process at a time create a new SQLite database; the others wait, then use it.

    Two processes migrating the same new file at once break it: the database's own file cannot
    serve as the lock (it exists, half-made, during the migration), so a lock file beside it
    does. Yields whether this is the process's first use of that database.
    """
    if not tracking_uri.startswith("sqlite:///") or tracking_uri in _READY_DATABASES:
        yield False
        return
    import fcntl

    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield True
    _READY_DATABASES.add(tracking_uri)


@contextlib.contextmanager
def _fluent_tracking(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (``start_run``, ``log_model``) at ``tracking_uri`` for a while.

    ``mlflow.set_tracking_uri`` is process-wide and exports ``MLFLOW_TRACKING_URI`` to the
    environment (and so to every later subprocess); both are put back afterwards.
    """
    import mlflow

    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env
        mlflow.set_tracking_uri(previous_env)  # type: ignore[arg-type]  # None: the default


def log_training_run(
    tracking_uri: str,
    experiment: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    model_path: Path,
    tags: dict[str, str],
) -> str:
    """Log one pipeline run (parameters, holdout metrics, the model) and return its run id."""
    import joblib
    import mlflow
    import sklearn

    client = _client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = (
        found.experiment_id
        if found is not None
        else client.create_experiment(
            experiment, artifact_location=_artifact_location(tracking_uri)
        )
    )
    with (
        _fluent_tracking(tracking_uri),
        mlflow.start_run(experiment_id=experiment_id, tags=tags) as run,
    ):
        mlflow.log_params({k: str(v) for k, v in params.items()})
        mlflow.log_metrics(metrics)
        model = joblib.load(model_path)
        # Explicit requirements: MLflow's inference of them imports the model in a subprocess.
        mlflow.sklearn.log_model(
            model,
            name="model",
            pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
            serialization_format="skops",
            skops_trusted_types=skops_trusted_types(model),
        )
        return str(run.info.run_id)


# The types a copy logged to MLflow may hold beyond skops' own defaults: scikit-learn's (a
# forest's ``Tree``, a ``ColumnTransformer``'s column list) and numpy's dtype objects.
_TRUSTED_MODULE_PREFIXES = ("sklearn.",)
_TRUSTED_TYPES = frozenset({"numpy.dtype"})


class UntrustedModelError(ValueError):
    """The model holds a type outside scikit-learn's own: MLflow's copy would have to trust it."""


def skops_trusted_types(model: Any) -> list[str]:
    """The types skops must be told to trust to round-trip ``model``: scikit-learn's only.

    MLflow logs the model in skops' format and loads it back at once with these types trusted
    (``mlflow.sklearn._save_model``); skops trusts none of scikit-learn's trees by default. This
    is MLflow's copy of the model, for its UI and registry: what is served is the store's signed
    ``model.joblib``, which this list does not touch. A type from anywhere else (a custom
    transformer) is refused rather than trusted.

    Raises:
        UntrustedModelError: When the model holds a type that is not scikit-learn's or numpy's
            dtype.
    """
    import skops.io

    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    foreign = [
        name
        for name in untrusted
        if name not in _TRUSTED_TYPES and not name.startswith(_TRUSTED_MODULE_PREFIXES)
    ]
    if foreign:
        raise UntrustedModelError(
            f"the model holds types that are not scikit-learn's ({', '.join(foreign)}): "
            "MLflow's copy of it would have to trust them; build the model from scikit-learn's "
            "own estimators and transformers"
        )
    return sorted(untrusted)


def _artifact_location(tracking_uri: str) -> str | None:
    """Beside a local SQLite store, not MLflow's default ``./mlruns`` in the working directory.

    A tracking server (the cluster's) decides its own artifact root, so ``None`` there.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()


def register_version(
    tracking_uri: str,
    model_name: str,
    run_id: str,
    store_version: int,
    storage_uri: str,
    tags: dict[str, str] | None = None,
) -> str:
    """Register the run's model as a new version of ``model_name``; return the MLflow version.

    ``tags`` are added to the version's own (a release's lineage, ``mlops.release``).
    """
    client = _client(tracking_uri)
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model_name)
    except MlflowException as err:
        if not _is_missing(err):
            raise
        client.create_registered_model(model_name)
    version = client.create_model_version(
        model_name,
        # No run: a version whose metadata names none (an abandoned one, see below).
        source=f"runs:/{run_id}/model" if run_id else storage_uri,
        run_id=run_id or None,
        tags={
            **(tags or {}),
            _STORE_VERSION_TAG: str(store_version),
            _STORAGE_URI_TAG: storage_uri,
        },
    )
    return str(version.version)


def register_version_once(
    tracking_uri: str, model_name: str, run_id: str, store_version: int, storage_uri: str
) -> None:
    """``register_version``, unless ``run_id`` already registered a version (a step run again).

    A store version newer than every registered one but older than ``store_version`` was
    published by a run that died before its deploy step registered it (``mlops run`` stopped
    after ``upload_model``): it is registered first, tagged ``abandoned`` and never given an
    alias, so that MLflow's version numbers go on following the store's. When that run's own
    deploy step comes after all (a retried step), it adopts its version: the tag is removed.
    """
    client = _client(tracking_uri)
    found = client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
    if found:
        if ABANDONED_TAG in found[0].tags:
            client.delete_model_version_tag(model_name, found[0].version, ABANDONED_TAG)
        return
    for orphan, orphan_run, orphan_uri in _unregistered_versions(
        client, model_name, store_version, storage_uri
    ):
        register_version(
            tracking_uri,
            model_name,
            orphan_run,
            orphan,
            orphan_uri,
            tags={ABANDONED_TAG: f"published by run {orphan_run}, which was never deployed"},
        )
    register_version(tracking_uri, model_name, run_id, store_version, storage_uri)


def _unregistered_versions(
    client: Any, model_name: str, store_version: int, storage_uri: str
) -> list[tuple[int, str, str]]:
    """``(store version, its MLflow run, its URI)`` of the versions no deploy step registered.

    Only those between the newest registered version and ``store_version``, oldest first: what
    runs that died since the last registration left complete in the store.
    """
    from mlops.store import StoreError, open_store, split_version_uri

    registered = [
        int(v.tags[_STORE_VERSION_TAG])
        for v in client.search_model_versions(f"name='{model_name}'")
        if str(v.tags.get(_STORE_VERSION_TAG, "")).isdigit()
    ]
    newest = max(registered, default=0)
    store_uri, _, _ = split_version_uri(storage_uri)
    store = open_store(store_uri)
    orphans = []
    for version in store.versions(model_name):
        if not newest < version < store_version:
            continue
        try:
            run = str(store.read_metadata(model_name, version).get("mlflow_run_id") or "")
        except StoreError:
            run = ""
        orphans.append((version, run, store.version_uri(model_name, version)))
    return orphans


def version_of_alias(tracking_uri: str, model_name: str, alias: str) -> tuple[int, str] | None:
    """The ``(store_version, storage_uri)`` of the version holding ``alias``, or ``None``."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        version = client.get_model_version_by_alias(model_name, alias)
    except MlflowException as err:
        if _is_missing(err):
            return None
        raise
    tags = version.tags
    if _STORE_VERSION_TAG not in tags:
        return None
    return int(tags[_STORE_VERSION_TAG]), str(tags.get(_STORAGE_URI_TAG, ""))


def storage_uri_of_alias(tracking_uri: str, model_name: str, alias: str) -> str | None:
    """The ``storage_uri`` of the version holding ``alias``, or ``None`` when none does."""
    found = version_of_alias(tracking_uri, model_name, alias)
    return found[1] or None if found else None


def move_alias(tracking_uri: str, model_name: str, store_version: int | str, alias: str) -> bool:
    """Point ``alias`` at the registered version of ``store_version``; ``False`` if unregistered."""
    client = _client(tracking_uri)
    found = client.search_model_versions(
        f"name='{model_name}' and tag.{_STORE_VERSION_TAG}='{store_version}'"
    )
    if not found:
        return False
    client.set_registered_model_alias(model_name, alias, found[0].version)
    return True


def set_aliases(
    tracking_uri: str, model_name: str, champion: str | None, challenger: str | None
) -> None:
    """Make ``champion`` and ``challenger`` name these store versions (``None``: no such one).

    The caller derives both from the serving traffic (``serving.deploy.sync_aliases``). An
    unknown champion (``None``) leaves the alias as it is; a champion version that is not
    registered removes the alias, so that it never names a version that does not serve.
    """
    if champion is not None and not move_alias(tracking_uri, model_name, champion, CHAMPION):
        drop_alias(tracking_uri, model_name, CHAMPION)
    if challenger is None or not move_alias(tracking_uri, model_name, challenger, CHALLENGER):
        drop_alias(tracking_uri, model_name, CHALLENGER)


def tag_version(
    tracking_uri: str, model_name: str, store_version: int | str, tags: dict[str, str]
) -> bool:
    """Set ``tags`` on the registered version of ``store_version``; ``False`` if unregistered."""
    client = _client(tracking_uri)
    found = client.search_model_versions(
        f"name='{model_name}' and tag.{_STORE_VERSION_TAG}='{store_version}'"
    )
    if not found:
        return False
    for key, value in tags.items():
        client.set_model_version_tag(model_name, found[0].version, key, value)
    return True


def drop_alias(tracking_uri: str, model_name: str, alias: str) -> None:
    """Remove ``alias`` if it is set."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        client.delete_registered_model_alias(model_name, alias)
    except MlflowException as err:
        if not _is_missing(err):
            raise


def version_of_run(tracking_uri: str, model_name: str, run_id: str) -> tuple[int, str] | None:
    """The ``(store_version, storage_uri)`` registered from ``run_id``, if any."""
    client = _client(tracking_uri)
    found = client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
    if not found:
        return None
    tags = found[0].tags
    return int(tags[_STORE_VERSION_TAG]), str(tags[_STORAGE_URI_TAG])


def run_tags(tracking_uri: str, run_id: str) -> dict[str, str] | None:
    """The tags of run ``run_id`` (``deploy`` and ``reason``: its gate); ``None``: no such run.

    Raises:
        MlflowException: When MLflow cannot be read (never "no such run").
    """
    from mlflow.exceptions import MlflowException

    try:
        run = _client(tracking_uri).get_run(run_id)
    except MlflowException as err:
        if _is_missing(err):
            return None
        raise
    return dict(run.data.tags)


# The tag a rollout (or a human's promote / rollback) leaves on the version it decided about.
OUTCOME_TAG = "rollout.outcome"
ROLLED_BACK = "rolled-back"


def version_tags(tracking_uri: str, model_name: str, store_version: int | str) -> dict[str, str]:
    """The tags of the registered version of ``store_version`` (empty when unregistered)."""
    found = _client(tracking_uri).search_model_versions(
        f"name='{model_name}' and tag.{_STORE_VERSION_TAG}='{store_version}'"
    )
    return dict(found[0].tags) if found else {}


def registry_problem(tracking_uri: str, model_name: str) -> str | None:
    """Why the registry cannot carry ``model_name``'s aliases, or ``None`` when it can.

    A local SQLite database that does not exist is reported without being opened (opening
    would create an empty one); an existing registry without a version of the model is too.
    """
    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        if not database.exists():
            return f"the MLflow registry {database} does not exist"
    found = _client(tracking_uri).search_model_versions(f"name='{model_name}'", max_results=1)
    if not found:
        return f"the MLflow registry {tracking_uri} has no registered version of {model_name!r}"
    return None
