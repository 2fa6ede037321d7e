"""Release a model version from one environment to another (dev -> prod), after approval.

A release copies ``model.joblib`` and ``metadata.json`` of a source version into the
destination's store as a NEW version (claimed with the store's write-once claim), so both
environments keep their own numbering and nothing is ever overwritten. In order:

1. checks, before anything is written: the two environments differ; the source version's
   signature verifies under the source's key and its file matches its sha256; it passed the
   source's gate (its MLflow run decided ``deploy``, and the source registry holds this very
   version from that run); the source's rollout promoted it (MLflow tag ``rollout.outcome``),
   or it serves all of the source's traffic, and it was never rolled back; it was not released
   before; the destination's MLflow and serving state can be read;
2. claims the release in the destination's store: a write-once marker named by the model
   file's sha256, created with the store's conditional create (as a version number is), so
   of two concurrent releases of one version exactly one goes on;
3. logs a release run in the destination's MLflow (the model, its metrics and the lineage),
   publishes the copy there, signed with the destination's key, and reads it back (signature
   and sha256 again, on the destination's side);
4. registers it in the destination's registry with lineage tags and deploys it through
   ``serving.deploy`` (with the payload logger in a cluster, as ``mlops deploy`` does): as a
   canary when a version already serves there, as KServe does.

A version is released once: a second release of the same source version (or of the same model
file) is refused, naming the destination version that holds it or the claim of the release
that is still under way.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlops import registry, signing
from mlops.environments import Environment
from mlops.store import StoreError, fetch_checked

LINEAGE_FIELD = "lineage"
# The MLflow model-version tag a rollout sets (``serving.rollout.tag_version``) and its values.
OUTCOME_TAG = registry.OUTCOME_TAG
PROMOTED = "promoted"
ROLLED_BACK = registry.ROLLED_BACK


class ReleaseRefused(ValueError):
    """The release was refused before anything was written; the message says why."""


@dataclass(frozen=True)
class ReleaseResult:
    """What a release did.

    Attributes:
        model_name: The model.
        source: The source environment's name.
        source_version: The released version, numbered in the source's store.
        destination: The destination environment's name.
        version: The new version, numbered in the destination's store.
        storage_uri: Where the destination's copy lives.
        sha256: The model file's sha256, the same on both sides.
        mlflow_version: The version registered in the destination's MLflow.
        stable: The version serving in the destination (MLflow's ``champion``).
        canary: The canary version in the destination (``challenger``), if one runs.
        lineage: What the copy's ``metadata.json`` records about its origin.
    """

    model_name: str
    source: str
    source_version: int
    destination: str
    version: int
    storage_uri: str
    sha256: str
    mlflow_version: str
    stable: str | None
    canary: str | None
    lineage: dict[str, Any] = field(default_factory=dict)


def release_version(
    model_name: str, version: int, source: Environment, destination: Environment
) -> ReleaseResult:
    """Copy ``version`` of ``model_name`` from ``source`` to ``destination`` and deploy it there.

    Raises:
        ReleaseRefused: When a check fails; nothing was written.
        StoreError: When a store cannot be read or written, or a copy fails its checks.
        SignatureError: When an environment has no usable signing key.
        MlflowException: When an MLflow server cannot be reached.
        RuntimeError: When the deploy fails (the destination's serving revision is unchanged).
    """
    from serving.deploy import deploy_inference_service, deployed_versions, sync_aliases
    from serving.inference_service import PredictorSettings, payload_sink_url

    _check_pair(source, destination)
    source_store, destination_store = source.open_store(), destination.open_store()
    if version not in source_store.versions(model_name):
        raise ReleaseRefused(
            f"{source.name} has no version {version} of {model_name!r} in {source.store} "
            f"(it has {source_store.versions(model_name) or 'none'})"
        )
    source_key = source.signing_key()
    with tempfile.TemporaryDirectory(prefix="mlops-release-") as tmp:
        model_path, metadata = fetch_checked(
            source_store, model_name, version, Path(tmp) / "source", source_key
        )
        sha256 = str(metadata["sha256"])
        gate = gate_record(source, model_name, version, metadata)
        rollout = rollout_evidence(source, model_name, version)
        # Read what the destination serves and its registry now: a broken state or an
        # unreachable MLflow stops the release here, before its store is written.
        serving_now = deployed_versions(
            model_name,
            destination.target,
            state_dir=destination.state_dir,
            namespace=destination.namespace,
        )
        _refuse_second_release(
            destination_store,
            model_name,
            source_store.uri,
            version,
            sha256,
            {serving_now.stable, serving_now.canary} if serving_now else set(),
        )
        registry.version_of_alias(destination.tracking_uri, model_name, registry.CHAMPION)
        destination_key = destination.signing_key(create=True)
        # The last step before anything is written: of concurrent releases, one goes on.
        _claim_release(destination_store, model_name, source_store.uri, version, sha256)

        lineage = {
            "source_environment": source.name,
            "source_store": source_store.uri,
            "source_version": version,
            "source_storage_uri": source_store.version_uri(model_name, version),
            "source_mlflow_run_id": gate["run_id"],
            "source_gate_reason": gate["reason"],
            "source_rollout": rollout,
            "sha256": sha256,
            "released_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        lineage_tags = {
            f"release.{key}": str(value) for key, value in lineage.items() if key != "released_at"
        }
        run_id = registry.log_training_run(
            destination.tracking_uri,
            experiment=model_name,
            params={key: str(value) for key, value in dict(metadata.get("params", {})).items()},
            metrics={k: float(v) for k, v in dict(metadata.get("metrics", {})).items()},
            model_path=model_path,
            tags={
                **lineage_tags,
                # The release run carries the gate it inherits, so a released version can be
                # released on (prod -> another environment) by the same proof.
                "deploy": "True",
                "reason": f"released from {source.name} version {version}: {gate['reason']}",
            },
        )
        copy = {k: v for k, v in metadata.items() if k != signing.SIGNATURE_FIELD}
        copy.update({"mlflow_run_id": run_id, LINEAGE_FIELD: lineage})
        new_version = destination_store.publish(
            model_name, model_path, copy, signing_key=destination_key
        )
        storage_uri = destination_store.version_uri(model_name, new_version)
        _, stored = fetch_checked(
            destination_store, model_name, new_version, Path(tmp) / "copy", destination_key
        )
        if stored.get("sha256") != sha256:
            raise StoreError(
                f"{storage_uri} records sha256 {stored.get('sha256')}, but {source.name} "
                f"version {version} has {sha256}: the copy is not the released model"
            )
    mlflow_version = registry.register_version(
        destination.tracking_uri, model_name, run_id, new_version, storage_uri, tags=lineage_tags
    )
    settings = PredictorSettings(
        name=model_name,
        namespace=destination.namespace,
        storage_uri=storage_uri,
        model_version=new_version,
        canary_traffic_percent=destination.canary_percent,
        service_account=destination.predictor_service_account,
        # A prod rollout judges the payload logger's events, as the pipeline's deploy does.
        payload_logger_url=(
            payload_sink_url(destination.namespace) if destination.target == "kubernetes" else None
        ),
    )
    try:
        applied = deploy_inference_service(settings, destination.target, destination.state_dir)
    except Exception as err:
        raise RuntimeError(
            f"{destination.name} version {new_version} is stored ({storage_uri}) and registered, "
            f"but its deploy failed: {err}"
        ) from err
    serving = sync_aliases(
        destination.tracking_uri, applied, destination.target, destination.state_dir
    )
    return ReleaseResult(
        model_name=model_name,
        source=source.name,
        source_version=version,
        destination=destination.name,
        version=new_version,
        storage_uri=storage_uri,
        sha256=sha256,
        mlflow_version=mlflow_version,
        stable=serving.stable,
        canary=serving.canary,
        lineage=lineage,
    )


def _check_pair(source: Environment, destination: Environment) -> None:
    if source.name == destination.name:
        raise ReleaseRefused(f"--from and --to are both {source.name!r}: name two environments")
    if _same_store(source.store, destination.store):
        raise ReleaseRefused(
            f"{source.name} and {destination.name} share the store {source.store}: a release "
            "copies between two stores; give each environment its own"
        )


def _same_store(first: str, second: str) -> bool:
    def normal(uri: str) -> str:
        if uri.startswith("s3://"):
            return uri.rstrip("/")
        return str(Path(uri.removeprefix("file://")).resolve())

    return normal(first) == normal(second)


def gate_record(
    source: Environment, model_name: str, version: int, metadata: dict[str, Any]
) -> dict[str, str]:
    """The proof that ``version`` passed ``source``'s gate: ``{"run_id", "reason"}``.

    The signed ``metadata.json`` names the MLflow run that evaluated the model; that run's
    ``deploy`` tag is the gate's decision (``components/evaluate.py``), and the source registry
    must hold this very store version from that run (registered by ``components/deploy_model.py``).

    Raises:
        ReleaseRefused: When any link is missing; the message says which and why.
    """
    where = f"{source.name} version {version} of {model_name!r}"
    run_id = metadata.get("mlflow_run_id")
    if not isinstance(run_id, str) or not run_id:
        raise ReleaseRefused(
            f"{where} never passed {source.name}'s gate: its metadata.json names no MLflow run "
            "(it was not published by the pipeline's gated upload step); train it with "
            "`mlops run` and release the version that run publishes"
        )
    tags = registry.run_tags(source.tracking_uri, run_id)
    if tags is None:
        raise ReleaseRefused(
            f"{where} cannot be shown to have passed {source.name}'s gate: its run {run_id} "
            f"is not in {source.name}'s MLflow ({source.tracking_uri})"
        )
    reason = tags.get("reason", "")
    if "deploy" not in tags:
        raise ReleaseRefused(
            f"{where} never passed {source.name}'s gate: its run {run_id} records no gate "
            "decision (no `deploy` tag; the pipeline's evaluate step sets it); release a "
            "version that `mlops run` published"
        )
    if tags.get("deploy") != "True":
        raise ReleaseRefused(
            f"{where} never passed {source.name}'s gate: its run {run_id} decided not to "
            f"deploy ({reason or 'no reason recorded'})"
        )
    registered = registry.version_of_run(source.tracking_uri, model_name, run_id)
    if registered is None or registered[0] != version:
        found = f"version {registered[0]}" if registered else "no version"
        raise ReleaseRefused(
            f"{where} is not the version its gated run {run_id} published: {source.name}'s "
            f"registry holds {found} from that run"
        )
    return {"run_id": run_id, "reason": reason}


def _refuse_second_release(
    store: Any,
    model_name: str,
    source_store: str,
    version: int,
    sha256: str,
    serving: set[str | None],
) -> None:
    """Refuse a version the destination already holds; name the way out if it does not serve.

    ``serving``: the destination versions that take traffic now (stable and canary). A copy
    that does not serve was rolled back, or its deploy failed after the copy: a release would
    not fix either, ``mlops deploy`` in that environment does.
    """
    for existing in store.versions(model_name):
        metadata = store.read_metadata(model_name, existing)
        lineage = metadata.get(LINEAGE_FIELD) or {}
        same_origin = (
            lineage.get("source_store") == source_store and lineage.get("source_version") == version
        )
        if same_origin or metadata.get("sha256") == sha256:
            where = store.version_uri(model_name, existing)
            way_out = (
                "use `mlops promote`/`mlops rollback` to change what serves"
                if str(existing) in serving
                else f"it does not serve there (rolled back, or its deploy failed): "
                f"`mlops deploy {existing}` with that environment's settings deploys it again"
            )
            raise ReleaseRefused(
                f"version {version} of {model_name!r} in {source_store} (sha256 {sha256[:12]}) is "
                f"already released as version {existing} ({where}): a version is released "
                f"once; {way_out}"
            )


def rollout_evidence(source: Environment, model_name: str, version: int) -> str:
    """Why ``source``'s serving lets ``version`` go on: its rollout promoted it, or it serves all.

    The rollout's verdict is the MLflow tag ``rollout.outcome`` on the version
    (``serving.rollout.tag_version``). Without one (a first deploy takes all traffic without a
    rollout), the source's aliases, which follow its serving traffic
    (``serving.deploy.sync_aliases``), must say it serves everything: ``champion`` names it and
    no ``challenger`` (canary) runs. Both come from the source's MLflow, which the release
    reads anyway: no read of the source's cluster, whose RBAC the release does not hold.

    Raises:
        ReleaseRefused: When a rollout rolled it back, or it neither was promoted nor serves
            all of the source's traffic.
    """
    where = f"{source.name} version {version} of {model_name!r}"
    tags = registry.version_tags(source.tracking_uri, model_name, version)
    outcome = tags.get(OUTCOME_TAG)
    if outcome == PROMOTED:
        return f"promoted by {source.name}'s rollout"
    if outcome == ROLLED_BACK:
        reason = tags.get("rollout.reason") or "no reason recorded"
        raise ReleaseRefused(
            f"{where} was rolled back by {source.name}'s rollout ({reason}): a release ships "
            f"only a version {source.name} promoted or serves whole; release the version "
            f"{source.name}'s champion serves, or roll out a new one there"
        )
    champion = registry.version_of_alias(source.tracking_uri, model_name, registry.CHAMPION)
    canary = registry.version_of_alias(source.tracking_uri, model_name, registry.CHALLENGER)
    if champion is not None and champion[0] == version and canary is None:
        return f"serves 100 % in {source.name}"
    serving = (
        "nothing serves there"
        if champion is None
        else f"it serves version {champion[0]}"
        + (f" with version {canary[0]} as canary" if canary else "")
    )
    raise ReleaseRefused(
        f"{where} was neither promoted by a rollout in {source.name} nor serves all of its "
        f"traffic ({serving}): roll it out there (`mlops rollout`) and release it once it is "
        "promoted"
    )


def _claim_release(
    store: Any, model_name: str, source_store: str, version: int, sha256: str
) -> None:
    """Claim the release of the model file ``sha256`` in the destination's store, once.

    Raises:
        ReleaseRefused: When another release holds the claim (running, or died before it
            published a version: the message names the marker to remove then).
    """
    name = f"release-{sha256}"
    claim = {
        "source_store": source_store,
        "source_version": version,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "claimed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if store.create_marker(model_name, name, json.dumps(claim, sort_keys=True).encode()):
        return
    try:
        held = json.loads(store.read_marker(model_name, name) or b"{}")
    except ValueError:
        held = {}
    holder = (
        f"claimed at {held.get('claimed_at')} by process {held.get('pid')} on {held.get('host')}"
        if isinstance(held, dict) and held.get("claimed_at")
        else "claimed"
    )
    raise ReleaseRefused(
        f"version {version} of {model_name!r} in {source_store} (sha256 {sha256[:12]}) is "
        f"being released by another `mlops release` ({holder}): a version is released once; "
        f"if that release died before it published a version, remove "
        f"{store.marker_uri(model_name, name)} and release again"
    )
