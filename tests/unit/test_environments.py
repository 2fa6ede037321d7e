"""Named environments: the local default, the file, and one clear error per wrong field."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlops import signing
from mlops.cli import main
from mlops.environments import (
    EnvironmentConfigError,
    default_environments,
    environment,
    load_environments,
)
from mlops.settings import S3Settings

ROOT = Path(__file__).parents[2]


@pytest.fixture
def no_file(tmp_path: Path, mlops_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No environments file anywhere: the working directory is empty, the variable unset."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLOPS_ENVIRONMENTS", raising=False)
    return mlops_home


def _file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "envs.yaml"
    path.write_text(body)
    return path


def test_without_a_file_dev_is_what_mlops_run_uses_and_prod_is_a_second_state_dir(
    no_file: Path,
) -> None:
    found = load_environments()
    assert set(found) == {"dev", "prod"}
    dev, prod = found["dev"], found["prod"]
    assert dev.state_dir == no_file and dev.store == str(no_file / "store")
    assert dev.tracking_uri == f"sqlite:///{no_file / 'mlflow.db'}"
    assert dev.signing_key_env == "MLOPS_SIGNING_KEY"
    assert prod.state_dir == no_file / "prod" and prod.store == str(no_file / "prod" / "store")
    assert prod.tracking_uri == f"sqlite:///{no_file / 'prod' / 'mlflow.db'}"
    assert prod.signing_key_env == "MLOPS_PROD_SIGNING_KEY"
    assert dev.target == prod.target == "local"


def test_the_default_dev_follows_the_store_and_mlflow_variables_mlops_run_reads(
    no_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLOPS_STORE_URI", "s3://models")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://localhost:5000")
    dev, prod = default_environments()["dev"], default_environments()["prod"]
    assert (dev.store, dev.tracking_uri) == ("s3://models", "http://localhost:5000")
    assert prod.store == str(no_file / "prod" / "store")


def test_a_file_defines_the_environments_with_paths_relative_to_it(
    tmp_path: Path, no_file: Path
) -> None:
    path = _file(
        tmp_path,
        "environments:\n"
        "  dev: {store: state/dev/store, tracking_uri: 'sqlite:///dev.db', state_dir: state/dev}\n"
        "  prod:\n"
        "    store: s3://models-prod/breast\n"
        "    tracking_uri: http://localhost:5002\n"
        "    target: kubernetes\n"
        "    namespace: mlops-prod\n"
        "    canary_percent: 25\n"
        "    signing_key_env: MLOPS_PROD_SIGNING_KEY\n"
        "    s3_endpoint: http://localhost:9002\n"
        "    s3_credentials_prefix: PROD_\n",
    )
    found = load_environments(path)
    assert found["dev"].store == str(tmp_path / "state/dev/store")
    assert found["dev"].state_dir == tmp_path / "state/dev"
    prod = found["prod"]
    assert (prod.target, prod.namespace, prod.canary_percent) == ("kubernetes", "mlops-prod", 25)
    assert prod.store == "s3://models-prod/breast"
    assert prod.state_dir == no_file / "prod"
    assert prod.predictor_service_account == "kserve-minio-sa"
    assert found["dev"].predictor_service_account is None


def test_the_variable_names_the_file_and_the_working_directorys_file_is_read(
    tmp_path: Path, no_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "environments.yaml").write_text(
        "environments:\n  qa: {store: qa, tracking_uri: 'sqlite:///qa.db'}\n"
    )
    assert set(load_environments()) == {"qa"}
    other = _file(tmp_path, "environments:\n  staging: {store: s, tracking_uri: 'sqlite:///s'}\n")
    monkeypatch.setenv("MLOPS_ENVIRONMENTS", str(other))
    assert set(load_environments()) == {"staging"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "environments:\n  prod: {store: s, tracking_uri: t, targt: local}\n",
            r"environments\.prod\.targt: Extra inputs are not permitted",
        ),
        (
            "environments:\n  prod: {store: s, tracking_uri: t, target: cluster}\n",
            r"environments\.prod\.target: Input should be 'local' or 'kubernetes' "
            r"\(got 'cluster'\)",
        ),
        (
            "environments:\n  prod: {store: s, tracking_uri: t, canary_percent: 150}\n",
            r"environments\.prod\.canary_percent: Input should be less than or equal to 100",
        ),
        (
            "environments:\n  prod: {tracking_uri: t}\n",
            r"environments\.prod\.store: Field required$",
        ),
        (
            "environments:\n  prod: {store: 's3://', tracking_uri: t}\n",
            r"environments\.prod\.store: Value error, an S3 store needs a bucket",
        ),
        (
            "environments:\n  prod: {store: s, tracking_uri: t, namespace: Prod_NS}\n",
            r"environments\.prod\.namespace: String should match pattern",
        ),
        (
            "environments:\n  Prod: {store: s, tracking_uri: t}\n",
            r"environments\.Prod\.name: String should match pattern",
        ),
        ("environments:\n  prod: local\n", r"environments\.prod: expected a mapping"),
        ("dev: {store: s}\n", r"expected a mapping 'environments:'"),
        ("environments: {}\nextra: 1\n", r"unknown top-level field\(s\) \['extra'\]"),
        ("environments: [\n", r"is not valid YAML"),
    ],
)
def test_a_wrong_file_is_one_error_naming_the_environment_and_field(
    tmp_path: Path, no_file: Path, body: str, message: str
) -> None:
    path = _file(tmp_path, body)
    with pytest.raises(EnvironmentConfigError, match=message) as raised:
        load_environments(path)
    assert str(raised.value).startswith(f"{path}")
    assert "\n" not in str(raised.value)


def test_a_missing_file_and_an_unknown_environment_are_clear_errors(
    tmp_path: Path, no_file: Path
) -> None:
    with pytest.raises(EnvironmentConfigError, match="cannot read the environments file"):
        load_environments(tmp_path / "missing.yaml")
    with pytest.raises(
        EnvironmentConfigError, match="no environment 'staging' in the local default: it "
        "defines dev, prod"
    ):
        environment("staging")


def test_each_environment_has_its_own_signing_key(
    no_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLOPS_PROD_SIGNING_KEY", raising=False)
    prod = default_environments()["prod"]
    with pytest.raises(signing.SignatureError, match="MLOPS_PROD_SIGNING_KEY is not set"):
        prod.signing_key()
    created = prod.signing_key(create=True)
    key_file = no_file / "prod" / "signing.key"
    assert key_file.read_text().strip().encode() == created
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert created != default_environments()["dev"].signing_key()  # the session's dev key
    monkeypatch.setenv("MLOPS_PROD_SIGNING_KEY", "p" * 40)
    assert prod.signing_key() == b"p" * 40


def test_an_environments_s3_credentials_come_from_its_own_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROD_AWS_ACCESS_KEY_ID", "prod-id")
    monkeypatch.setenv("PROD_AWS_SECRET_ACCESS_KEY", "prod-secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "dev-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "dev-secret")
    settings = S3Settings.from_env("https://minio.prod:9000", "PROD_")
    assert (settings.endpoint, settings.secure) == ("minio.prod:9000", True)
    assert (settings.access_key, settings.secret_key) == ("prod-id", "prod-secret")
    monkeypatch.delenv("PROD_AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ValueError, match="set both PROD_AWS_ACCESS_KEY_ID and PROD_AWS_SECRET"):
        S3Settings.from_env("http://minio.prod:9000", "PROD_")


def test_the_committed_cluster_environments_load(no_file: Path) -> None:
    found = load_environments(ROOT / "environments.cluster.yaml")
    assert {"dev", "prod"} <= set(found)
    assert found["dev"].namespace == "kubeflow-user"
    assert found["prod"].namespace == "mlops-prod"
    assert {env.target for env in found.values()} == {"kubernetes"}
    assert found["dev"].signing_key_env != found["prod"].signing_key_env
    assert found["dev"].s3_credentials_prefix != found["prod"].s3_credentials_prefix


def test_mlops_release_names_an_unknown_environment_in_one_line(no_file: Path) -> None:
    result = CliRunner().invoke(main, ["release", "1", "--from", "dev", "--to", "staging"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "error: no environment 'staging' in the local default: it defines dev, prod"
    )
    assert not (no_file / "prod").exists()
