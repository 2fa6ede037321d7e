"""Signed versions: whoever can only write the store cannot make mlops unpickle their file."""

import json
import pickle
import shutil
import stat
from pathlib import Path

import pytest

from mlops import signing
from mlops.store import LocalStore, StoreError, fetch_version, sha256_file


class _TouchesAFile:
    """A pickle that runs code when loaded: it creates the file named in its state."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def published(store: LocalStore, tmp_path: Path) -> str:
    model = tmp_path / "model.joblib"
    model.write_bytes(pickle.dumps({"a": "harmless model"}))
    version = store.publish("m", model, {"sha256": sha256_file(model), "metrics": {"f1": 0.9}})
    return store.version_uri("m", version)


def _version_dir(store: LocalStore, version: int = 1) -> Path:
    return store.root / "m" / str(version)


def _rewrite(path: Path, **changes: object) -> None:
    metadata = json.loads(path.read_text())
    metadata.update(changes)
    path.write_text(json.dumps(metadata))


def test_a_published_version_is_signed_and_verifies(published: str, tmp_path: Path) -> None:
    path, metadata = fetch_version(published, tmp_path / "a")
    assert metadata["signature"]["algorithm"] == "hmac-sha256"
    assert pickle.loads(path.read_bytes()) == {"a": "harmless model"}


def test_a_malicious_model_written_to_the_store_never_runs_in_the_local_server(
    store: LocalStore, published: str, tmp_path: Path
) -> None:
    from serving.model import Revision, RevisionModel

    # The attacker can write the store: a code-running pickle and a matching sha256.
    proof = tmp_path / "code-ran"
    directory = _version_dir(store)
    (directory / "model.joblib").write_bytes(pickle.dumps(_TouchesAFile(str(proof))))
    _rewrite(directory / "metadata.json", sha256=sha256_file(directory / "model.joblib"))

    model = RevisionModel("m", Revision("m-predictor-00001", published, "1"))
    with pytest.raises(StoreError, match="does not match its signature"):
        model.load()
    assert not proof.exists()
    assert not model.ready


def test_an_unsigned_version_is_refused_with_what_to_do(store: LocalStore, published: str,
                                                        tmp_path: Path) -> None:
    metadata_path = _version_dir(store) / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    del metadata["signature"]
    metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(StoreError, match="has no signature: refusing to load an unsigned model"):
        fetch_version(published, tmp_path / "a")


def test_changed_metadata_is_refused(store: LocalStore, published: str, tmp_path: Path) -> None:
    _rewrite(_version_dir(store) / "metadata.json", metrics={"f1": 1.0})
    with pytest.raises(StoreError, match="was changed after it was published"):
        fetch_version(published, tmp_path / "a")


def test_a_signed_version_copied_to_another_number_is_refused(
    store: LocalStore, published: str, tmp_path: Path
) -> None:
    # Replaying an old, signed version as the newest one must not verify.
    shutil.copytree(_version_dir(store), _version_dir(store, 7))
    with pytest.raises(StoreError, match="does not match its signature"):
        fetch_version(store.version_uri("m", 7), tmp_path / "a")


def test_a_version_signed_with_another_key_says_which_key(
    published: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(signing.KEY_ENV, "another-key-" + "f" * 40)
    with pytest.raises(StoreError, match=r"was signed with key [0-9a-f]{16}, but this machine's key"
                                         r" is [0-9a-f]{16}: set MLOPS_SIGNING_KEY"):
        fetch_version(published, tmp_path / "a")


def test_a_short_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(signing.KEY_ENV, "short")
    with pytest.raises(signing.SignatureError, match="has 5 characters, fewer than 32"):
        signing.signing_key()


def test_without_the_env_key_a_first_publish_creates_a_private_key_file(
    tmp_path: Path, mlops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(signing.KEY_ENV)
    store = LocalStore(tmp_path / "store")
    model = tmp_path / "model.joblib"
    model.write_bytes(b"bytes")
    with pytest.raises(StoreError, match="no signing key: MLOPS_SIGNING_KEY is not set"):
        fetch_version(f"file://{tmp_path / 'store'}/m/1/", tmp_path / "none")

    version = store.publish("m", model, {"sha256": sha256_file(model)})

    key_file = mlops_home / "signing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not str(key_file).startswith(str(store.root))
    fetch_version(store.version_uri("m", version), tmp_path / "a")
    key_file.chmod(0o644)
    with pytest.raises(StoreError, match=r"is open to other users .* chmod 600"):
        fetch_version(store.version_uri("m", version), tmp_path / "b")


def test_in_a_pod_without_the_env_key_nothing_is_published(
    tmp_path: Path, mlops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(signing.KEY_ENV)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    model = tmp_path / "model.joblib"
    model.write_bytes(b"bytes")
    with pytest.raises(StoreError, match="set it from the pipeline's Secret"):
        LocalStore(tmp_path / "store").publish("m", model, {"sha256": sha256_file(model)})
    assert not (tmp_path / "store" / "m").exists()
    assert not (mlops_home / "signing.key").exists()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o610, 0o620], ids=oct)
def test_a_key_file_its_group_or_others_can_reach_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    monkeypatch.delenv(signing.KEY_ENV)
    key_file = tmp_path / "signing.key"
    key_file.write_text("k" * 40)
    key_file.chmod(0o600)
    assert signing.signing_key(key_file=key_file) == b"k" * 40
    key_file.chmod(mode)
    with pytest.raises(signing.SignatureError, match=rf"is open to other users \(mode "
                       rf"{stat.filemode(stat.S_IFREG | mode)}\).*chmod 600 {key_file}"):
        signing.signing_key(key_file=key_file)
