"""`mlops release` between two real local environments: dev (`.mlops/`) and prod (`.mlops/prod/`).

Dev's first version comes from a real `mlops run` (kfp.local), so the release reads what the
pipeline's gate and upload step really record. Further dev versions are published with the
functions the upload step uses, one of them from a run whose gate said no.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import pytest
from click.testing import CliRunner

from mlops import registry, signing
from mlops.cli import main
from mlops.store import LocalStore, fetch_checked, sha256_file
from mlops.training import fit_classifier
from pipelines.local import run_locally
from serving import local_controller
from tests.integration.s3_server import S3Server

MODEL = "breast-cancer"
PROD_KEY = "prod-signing-key-" + "fedcba9876543210" * 2


def _split(state: dict) -> dict[str, int]:
    return {t.model_version: t.percent for t in local_controller.traffic_targets(state)}


def _dev_version(
    home: Path, model_file: Path, *, deploy: bool | None, reason: str,
    outcome: str | None = "promoted", run_id: str | None = None,
) -> int:
    """Publish a dev version as the upload step does, from a run whose gate said ``deploy``.

    ``outcome``: the ``rollout.outcome`` tag dev's rollout left on it (``None``: no rollout);
    ``deploy=None``: a run with no gate decision at all; ``run_id``: name that run instead of
    logging a new one.
    """
    tracking = f"sqlite:///{home / 'mlflow.db'}"
    gate = {} if deploy is None else {"deploy": str(deploy)}
    run_id = run_id or registry.log_training_run(
        tracking, MODEL, params={}, metrics={"accuracy": 0.95}, model_path=model_file,
        tags={**gate, "reason": reason},
    )
    store = LocalStore(home / "store")
    metadata = {**store.read_metadata(MODEL, 1), "sha256": sha256_file(model_file),
                "mlflow_run_id": run_id}
    metadata.pop(signing.SIGNATURE_FIELD)
    version = store.publish(MODEL, model_file, metadata)
    if deploy and registry.version_of_run(tracking, MODEL, run_id) is None:
        # the deploy step registers what upload published; a gated run publishes nothing
        registry.register_version(tracking, MODEL, run_id, version,
                                  store.version_uri(MODEL, version))
    if deploy and outcome:  # as serving.rollout.tag_version records a rollout's end
        registry.tag_version(tracking, MODEL, version, {
            "rollout.outcome": outcome, "rollout.reason": f"{outcome} at step 50"})
    return version


def _model_file(folder: Path, breast_cancer: Any, c: float) -> Path:
    path = folder / f"model-{c}.joblib"
    model = fit_classifier(breast_cancer, "target", "logistic_regression",
                           {"C": c, "max_iter": 1000}, 0)
    joblib.dump(model, path)
    return path


def _release(version: int) -> Any:
    return CliRunner().invoke(main, ["release", str(version), "--from", "dev", "--to", "prod"])


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory, breast_cancer: Any) -> dict:
    """Dev versions 1 (a real run) and 2 (gated) released to prod, then the refusals."""
    root = tmp_path_factory.mktemp("release")
    home = root / ".mlops"
    prod = home / "prod"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLOPS_HOME", str(home))
        patch.setenv("MLOPS_PROD_SIGNING_KEY", PROD_KEY)
        for name in ("MLOPS_STORE_URI", "MLFLOW_TRACKING_URI", "MLOPS_S3_ENDPOINT",
                     "MLOPS_ENVIRONMENTS"):
            patch.delenv(name, raising=False)
        run = run_locally({}, home)
        dev_state = local_controller.read_state(MODEL, home)
        # The first release through the console entry point, as a user (or the workflow) runs it.
        first = subprocess.run(
            [sys.executable, "-m", "mlops.cli", "release", "1", "--from", "dev", "--to", "prod"],
            cwd=root, capture_output=True, text=True, timeout=300, env=dict(os.environ),
        )
        after_first = local_controller.read_state(MODEL, prod)
        second_model = _model_file(root, breast_cancer, 0.5)
        version_2 = _dev_version(home, second_model, deploy=True, reason="accuracy 0.95 ok")
        second = _release(version_2)
        after_second = local_controller.read_state(MODEL, prod)
        again = _release(1)
        ungated_model = _model_file(root, breast_cancer, 0.25)
        ungated_version = _dev_version(home, ungated_model, deploy=False,
                                       reason="accuracy 0.41 is below min_accuracy 0.90")
        ungated = _release(ungated_version)
        unrun_model = _model_file(root, breast_cancer, 0.125)
        store = LocalStore(home / "store")
        metadata = {**store.read_metadata(MODEL, 1), "sha256": sha256_file(unrun_model)}
        metadata.pop(signing.SIGNATURE_FIELD)
        metadata.pop("mlflow_run_id")
        unrun = _release(store.publish(MODEL, unrun_model, metadata))
        tampered_model = _model_file(root, breast_cancer, 2.0)
        tampered_version = _dev_version(home, tampered_model, deploy=True, reason="ok")
        target = home / "store" / MODEL / str(tampered_version) / "model.joblib"
        target.write_bytes(target.read_bytes() + b"\x00")  # changed after its upload
        tampered_file = _release(tampered_version)
        resigned_version = _dev_version(home, _model_file(root, breast_cancer, 4.0),
                                        deploy=True, reason="ok")
        meta_path = home / "store" / MODEL / str(resigned_version) / "metadata.json"
        edited = json.loads(meta_path.read_text())
        edited["metrics"]["accuracy"] = 1.0
        meta_path.write_text(json.dumps(edited))
        tampered_metadata = _release(resigned_version)
        rolled_back = _release(_dev_version(home, _model_file(root, breast_cancer, 8.0),
                                            deploy=True, reason="ok", outcome="rolled-back"))
        unrolled = _release(_dev_version(home, _model_file(root, breast_cancer, 16.0),
                                         deploy=True, reason="ok", outcome=None))
        undecided = _release(_dev_version(home, _model_file(root, breast_cancer, 32.0),
                                          deploy=None, reason="no gate ran"))
        # A second version that names version 2's gated run, which registered version 2 only.
        run_of_2 = json.loads((home / "store" / MODEL / str(version_2) / "metadata.json")
                              .read_text())["mlflow_run_id"]
        other_version = _release(_dev_version(home, _model_file(root, breast_cancer, 64.0),
                                              deploy=True, reason="ok", run_id=run_of_2))
        after_refusals = local_controller.read_state(MODEL, prod)
    return {"home": home, "prod": prod, "run": run, "first": first, "second": second,
            "again": again, "ungated": ungated, "unrun": unrun, "tampered_file": tampered_file,
            "tampered_metadata": tampered_metadata, "version_2": version_2,
            "rolled_back": rolled_back, "unrolled": unrolled, "undecided": undecided,
            "other_version": other_version,
            "dev_state": dev_state, "after_first": after_first, "after_second": after_second,
            "after_refusals": after_refusals, "dev_after": local_controller.read_state(MODEL, home)}


def test_release_copies_a_gated_dev_version_to_prod_with_its_sha256_and_lineage(
    released: dict,
) -> None:
    first = released["first"]
    assert first.returncode == 0, first.stderr
    dev_dir = released["home"] / "store" / MODEL / "1"
    prod_dir = released["prod"] / "store" / MODEL / "1"
    sha = sha256_file(dev_dir / "model.joblib")
    assert sha256_file(prod_dir / "model.joblib") == sha
    assert f"sha256:     {sha}" in first.stdout
    copy = json.loads((prod_dir / "metadata.json").read_text())
    dev = json.loads((dev_dir / "metadata.json").read_text())
    assert copy["sha256"] == sha and copy["metrics"] == dev["metrics"]
    lineage = copy["lineage"]
    assert lineage["source_environment"] == "dev" and lineage["source_version"] == 1
    assert lineage["source_mlflow_run_id"] == dev["mlflow_run_id"] == released["run"].mlflow_run_id
    assert lineage["sha256"] == sha
    assert lineage["source_storage_uri"] == f"file://{dev_dir}/"


def test_the_copy_is_signed_with_prods_key_not_devs(released: dict) -> None:
    copy = json.loads((released["prod"] / "store" / MODEL / "1" / "metadata.json").read_text())
    signing.verify(copy, MODEL, 1, PROD_KEY.encode(), "prod ")
    with pytest.raises(signing.SignatureError, match="signed with key"):
        signing.verify(copy, MODEL, 1, os.environ["MLOPS_SIGNING_KEY"].encode(), "prod ")


def test_release_registers_the_copy_in_prods_mlflow_with_lineage_tags(released: dict) -> None:
    from mlflow import MlflowClient

    tracking = f"sqlite:///{released['prod'] / 'mlflow.db'}"
    versions = MlflowClient(tracking_uri=tracking).search_model_versions(f"name='{MODEL}'")
    tags = {v.tags["store_version"]: v.tags for v in versions}
    assert set(tags) == {"1", "2"}
    assert tags["1"]["release.source_environment"] == "dev"
    assert tags["1"]["release.source_version"] == "1"
    assert tags["1"]["release.sha256"] == sha256_file(
        released["home"] / "store" / MODEL / "1" / "model.joblib")
    assert tags["2"]["release.source_version"] == str(released["version_2"])
    assert registry.version_of_alias(tracking, MODEL, registry.CHAMPION)[0] == 1
    assert registry.version_of_alias(tracking, MODEL, registry.CHALLENGER)[0] == 2


def test_the_first_release_serves_all_traffic_and_the_next_is_a_canary(released: dict) -> None:
    assert _split(released["after_first"]) == {"1": 100}
    assert released["second"].exit_code == 0, released["second"].output
    assert _split(released["after_second"]) == {"2": 10, "1": 90}
    assert "champion: version 1, canary: version 2" in released["second"].output
    assert released["dev_after"] == released["dev_state"], "a release changed dev's serving"


def test_a_second_release_of_the_same_version_is_refused(released: dict) -> None:
    again = released["again"]
    assert again.exit_code == 1
    assert "is already released as version 1" in again.output
    assert "use `mlops promote`/`mlops rollback` to change what serves" in again.output


def test_a_released_copy_that_does_not_serve_is_refused_with_the_deploy_that_fixes_it(
    tmp_path: Path,
) -> None:
    """Its deploy failed after the copy (or it was rolled back): `mlops deploy` is the way out."""
    from mlops.release import LINEAGE_FIELD, ReleaseRefused, _refuse_second_release

    store = LocalStore(tmp_path / "prod-store")
    (tmp_path / "model.joblib").write_bytes(b"a model")
    lineage = {"source_store": "file:///dev-store", "source_version": 3}
    store.publish(MODEL, tmp_path / "model.joblib", {"sha256": "ab" * 32, LINEAGE_FIELD: lineage})
    with pytest.raises(ReleaseRefused, match=r"already released as version 1 .*it does not serve"
                       r" there \(rolled back, or its deploy failed\): `mlops deploy 1`"):
        _refuse_second_release(store, MODEL, "file:///dev-store", 3, "cd" * 32, {"2", None})


def test_an_ungated_version_is_refused_with_the_gates_reason(released: dict) -> None:
    ungated = released["ungated"]
    assert ungated.exit_code == 1
    assert "never passed dev's gate" in ungated.output
    assert "accuracy 0.41 is below min_accuracy 0.90" in ungated.output
    unrun = released["unrun"]
    assert unrun.exit_code == 1
    assert "never passed dev's gate: its metadata.json names no MLflow run" in unrun.output


def test_a_version_dev_rolled_back_is_refused_with_the_rollouts_reason(released: dict) -> None:
    refused = released["rolled_back"]
    assert refused.exit_code == 1
    assert "was rolled back by dev's rollout (rolled-back at step 50)" in refused.output
    assert "a release ships only a version dev promoted or serves whole" in refused.output


def test_a_version_no_rollout_promoted_and_that_does_not_serve_everything_is_refused(
    released: dict,
) -> None:
    refused = released["unrolled"]
    assert refused.exit_code == 1
    assert "was neither promoted by a rollout in dev nor serves all of its traffic " \
        "(it serves version 1)" in refused.output
    assert "`mlops rollout`" in refused.output


def test_the_first_release_cites_that_the_version_serves_all_of_devs_traffic(
    released: dict,
) -> None:
    assert "rollout:    serves 100 % in dev" in released["first"].stdout
    assert "rollout:    promoted by dev's rollout" in released["second"].output


def test_a_version_whose_run_records_no_gate_decision_is_refused(released: dict) -> None:
    refused = released["undecided"]
    assert refused.exit_code == 1
    assert "records no gate decision (no `deploy` tag" in refused.output


def test_a_version_other_than_the_one_its_gated_run_registered_is_refused(
    released: dict,
) -> None:
    refused = released["other_version"]
    assert refused.exit_code == 1
    assert "is not the version its gated run" in refused.output
    assert f"dev's registry holds version {released['version_2']} from that run" in refused.output


def test_a_tampered_dev_version_is_refused(released: dict) -> None:
    assert released["tampered_file"].exit_code == 1
    assert "refusing to load a file that changed after upload" in released["tampered_file"].output
    assert released["tampered_metadata"].exit_code == 1
    assert "does not match its signature" in released["tampered_metadata"].output


def test_refusals_write_nothing_to_prod(released: dict) -> None:
    assert LocalStore(released["prod"] / "store").versions(MODEL) == [1, 2]
    prod_model = released["prod"] / "store" / MODEL
    assert sorted(p.name for p in prod_model.iterdir()) == [".markers", "1", "2"]
    # One claim per release that went on, none for a refused one.
    claims = {f"release-{sha256_file(prod_model / v / 'model.joblib')}" for v in ("1", "2")}
    assert {p.name for p in (prod_model / ".markers").iterdir()} == claims
    assert released["after_refusals"] == released["after_second"]


def test_dev_and_prod_sharing_a_store_is_refused(tmp_path: Path, mlops_home: Path) -> None:
    config = tmp_path / "environments.yaml"
    config.write_text(
        "environments:\n"
        "  dev: {store: shared, tracking_uri: 'sqlite:///dev.db'}\n"
        "  prod: {store: ./shared/, tracking_uri: 'sqlite:///prod.db'}\n"
    )
    result = CliRunner().invoke(main, ["release", "1", "--environments", str(config)])
    assert result.exit_code == 1
    assert "dev and prod share the store" in result.output
    assert not (tmp_path / "shared").exists()


def test_release_to_an_s3_prod_uses_that_environments_own_endpoint_and_credentials(
    released: dict, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = released["home"]
    config = tmp_path / "environments.yaml"
    config.write_text(
        "environments:\n"
        f"  dev: {{store: '{home / 'store'}', tracking_uri: 'sqlite:///{home / 'mlflow.db'}',"
        f" state_dir: '{home}'}}\n"
        "  prod:\n"
        "    store: s3://models/released\n"
        f"    s3_endpoint: {s3_server.endpoint}\n"
        "    s3_credentials_prefix: PROD_\n"
        f"    tracking_uri: 'sqlite:///{tmp_path / 'prod.db'}'\n"
        f"    state_dir: '{tmp_path / 'prod'}'\n"
        "    signing_key_env: MLOPS_PROD_SIGNING_KEY\n"
    )
    monkeypatch.setenv("MLOPS_PROD_SIGNING_KEY", PROD_KEY)
    monkeypatch.setenv("PROD_AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("PROD_AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    # The plain variables are another environment's: they must not be what prod uses.
    monkeypatch.setenv("MLOPS_S3_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "someone-else")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "someone-elses-secret")
    result = CliRunner().invoke(main, ["release", "1", "--environments", str(config)])
    assert result.exit_code == 0, result.output
    assert "prod version 1 at s3://models/released/breast-cancer/1/" in result.output
    from mlops.environments import environment

    prod = environment("prod", config)
    _, copy = fetch_checked(prod.open_store(), MODEL, 1, tmp_path / "copy", PROD_KEY.encode())
    assert sha256_file(tmp_path / "copy" / "model.joblib") == sha256_file(
        home / "store" / MODEL / "1" / "model.joblib")
    assert copy["lineage"]["source_version"] == 1
    assert _split(local_controller.read_state(MODEL, tmp_path / "prod")) == {"1": 100}


def test_mlops_serve_of_prod_loads_both_released_versions_under_prods_key(
    released: dict, breast_cancer: Any
) -> None:
    import httpx

    from tests.integration.serving_helpers import start_server, v2_body

    rows = breast_cancer.drop(columns=["target"]).to_numpy(dtype=float)[:3]
    server = start_server(released["prod"], env={"MLOPS_SIGNING_KEY": PROD_KEY})
    try:
        for version in ("1", "2"):
            url = f"{server.url}/v2/models/{MODEL}/versions/{version}/infer"
            answer = httpx.post(url, json=v2_body(rows), timeout=30)
            assert answer.status_code == 200, answer.text
            assert len(answer.json()["outputs"][0]["data"]) == 3
    finally:
        server.stop()


def _fresh_prod(released: dict, folder: Path, target: str = "local") -> Path:
    """An environments file: the fixture's dev, and a new, empty prod under ``folder``."""
    home = released["home"]
    config = folder / "environments.yaml"
    config.write_text(
        "environments:\n"
        f"  dev: {{store: '{home / 'store'}', tracking_uri: 'sqlite:///{home / 'mlflow.db'}',"
        f" state_dir: '{home}'}}\n"
        f"  prod: {{store: '{folder / 'prod' / 'store'}',"
        f" tracking_uri: 'sqlite:///{folder / 'prod' / 'mlflow.db'}',"
        f" state_dir: '{folder / 'prod'}', target: {target}, namespace: prod-models,"
        " signing_key_env: MLOPS_PROD_SIGNING_KEY}\n"
    )
    return config


def test_two_concurrent_releases_of_one_version_make_one_prod_version(
    released: dict, tmp_path: Path
) -> None:
    """Two real `mlops release` processes at once: the store's conditional create picks one."""
    config = _fresh_prod(released, tmp_path)
    env = {**os.environ, "MLOPS_PROD_SIGNING_KEY": PROD_KEY}
    command = [sys.executable, "-m", "mlops.cli", "release", "1", "--environments", str(config)]
    processes = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    codes = sorted(process.returncode for process in processes)
    assert codes == [0, 1], outputs
    refused = next(out for out, p in zip(outputs, processes, strict=True) if p.returncode)
    assert "a version is released once" in refused, refused
    assert LocalStore(tmp_path / "prod" / "store").versions(MODEL) == [1]
    assert _split(local_controller.read_state(MODEL, tmp_path / "prod")) == {"1": 100}


def test_a_claim_left_by_a_release_that_died_is_named_with_the_way_out(
    released: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _fresh_prod(released, tmp_path)
    monkeypatch.setenv("MLOPS_PROD_SIGNING_KEY", PROD_KEY)
    sha = sha256_file(released["home"] / "store" / MODEL / "1" / "model.joblib")
    prod_store = LocalStore(tmp_path / "prod" / "store")
    assert prod_store.create_marker(MODEL, f"release-{sha}", b'{"claimed_at": "then"}')
    result = CliRunner().invoke(main, ["release", "1", "--environments", str(config)])
    assert result.exit_code == 1
    assert "is being released by another `mlops release`" in result.output
    assert f"remove {prod_store.marker_uri(MODEL, f'release-{sha}')} and release again" \
        in result.output
    assert prod_store.versions(MODEL) == []


def test_a_copy_whose_stored_sha256_differs_from_the_sources_is_refused(
    released: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, breast_cancer: Any
) -> None:
    """A destination store that keeps another model (checked against its own, consistent
    metadata) is caught by the read-back's comparison with the source's sha256."""
    config = _fresh_prod(released, tmp_path)
    monkeypatch.setenv("MLOPS_PROD_SIGNING_KEY", PROD_KEY)
    other = _model_file(tmp_path, breast_cancer, 0.0625)
    publish = LocalStore.publish

    def keeps_another_model(self: LocalStore, name: str, _file: Path, metadata: dict,
                            signing_key: bytes | None = None) -> int:
        return publish(self, name, other, {**metadata, "sha256": sha256_file(other)},
                       signing_key)

    monkeypatch.setattr(LocalStore, "publish", keeps_another_model)
    result = CliRunner().invoke(main, ["release", "1", "--environments", str(config)])
    assert result.exit_code == 1
    assert "the copy is not the released model" in result.output
    with pytest.raises(local_controller.NotDeployedError):
        local_controller.read_state(MODEL, tmp_path / "prod")


def test_a_release_to_a_cluster_deploys_with_the_payload_logger(
    released: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prod's InferenceService logs its payloads to the sink, as `mlops deploy` does, so a
    prod rollout has signals. The cluster is the fake Kubernetes API with KServe's status
    logic (tests/unit/kserve_status_fake.py, which cites kserve v0.20.0)."""
    from tests.unit.kserve_status_fake import FakeCluster, serve, write_kubeconfig

    config = _fresh_prod(released, tmp_path, target="kubernetes")
    monkeypatch.setenv("MLOPS_PROD_SIGNING_KEY", PROD_KEY)
    cluster = FakeCluster()
    with serve(cluster) as url:
        monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(url, tmp_path / "kubeconfig")))
        result = CliRunner().invoke(main, ["release", "1", "--environments", str(config)])
    assert result.exit_code == 0, result.output
    logger = cluster.objects[("prod-models", MODEL)]["spec"]["predictor"]["logger"]
    assert logger == {"mode": "all",
                      "url": "http://mlops-payload-sink.prod-models.svc.cluster.local/",
                      **{k: v for k, v in logger.items() if k not in ("mode", "url")}}


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_a_release_claim_is_created_once_in_either_store(
    backend: str, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlops.store import open_store

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    uri = f"s3://models/claims-{os.getpid()}" if backend == "s3" else str(tmp_path / "store")
    store = open_store(uri)
    assert store.read_marker(MODEL, "release-ab") is None
    assert store.create_marker(MODEL, "release-ab", b'{"pid": 1}')
    assert not store.create_marker(MODEL, "release-ab", b'{"pid": 2}')
    assert store.read_marker(MODEL, "release-ab") == b'{"pid": 1}'
    assert store.marker_uri(MODEL, "release-ab").endswith(f"{MODEL}/.markers/release-ab")
    assert store.versions(MODEL) == []  # a marker is no version
    with pytest.raises(ValueError, match="marker name"):
        store.create_marker(MODEL, "../escape", b"")
