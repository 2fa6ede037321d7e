"""Deploy, promote and rollback while `mlops serve` answers: no failed request, no restart."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pandas as pd
import pytest

from tests.integration.serving_helpers import (
    NAME,
    deploy,
    deploy_champion_and_canary,
    fit,
    free_port,
    mlops,
    publish,
    register_versions,
    start_server,
    v2_body,
    wait_for,
)


def test_promote_then_rollback_under_eight_concurrent_clients_fail_no_request(
    tmp_path: Path, breast_cancer: pd.DataFrame
) -> None:
    home = tmp_path / ".mlops"
    deploy_champion_and_canary(home, breast_cancer, tmp_path)
    register_versions(home, tmp_path, [1, 2])
    server = start_server(home)
    url = f"{server.url}/v2/models/{NAME}/infer"
    body = json.dumps(v2_body(breast_cancer.drop(columns=["target"]).to_numpy()[:5]))
    results: list[tuple[int | str, str]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                try:
                    response = http.post(
                        url, content=body, headers={"content-type": "application/json"}
                    )
                    results.append((response.status_code, response.json().get("model_version")))
                except Exception as err:  # any failure counts, whatever its kind
                    results.append((repr(err), ""))

    def last_versions(count: int = 40) -> set[str]:
        return {version for _, version in results[-count:]}

    threads = [threading.Thread(target=client) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: len(results) > 200)
        assert last_versions(200) == {"1", "2"}

        promoted = mlops(home, "promote")
        assert promoted.returncode == 0, promoted.stderr
        wait_for(lambda: last_versions() == {"2"})

        rolled_back = mlops(home, "rollback")
        assert rolled_back.returncode == 0, rolled_back.stderr
        # Rollback after a promote: back to the revision rolled out before it.
        wait_for(lambda: last_versions() == {"1"})

        # A new deploy splits with the revision that serves (1), never with the rolled-back 2:
        # as in KServe, the rollback re-pointed latestRolledoutRevision at revision 1.
        version, uri = publish(home, fit(breast_cancer, 0.1), breast_cancer, tmp_path)
        deploy(home, version, uri, canary=50)
        wait_for(lambda: last_versions() == {"1", "3"})
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        server.stop()
    failed = [result for result in results if result[0] != 200]
    assert not failed, failed[:5]
    assert len(results) > 500


def test_a_canary_whose_file_is_corrupt_keeps_its_share_and_answers_503_naming_it(
    tmp_path: Path, breast_cancer: pd.DataFrame
) -> None:
    home = tmp_path / ".mlops"
    version, uri = publish(home, fit(breast_cancer, 1.0), breast_cancer, tmp_path)
    deploy(home, version, uri)
    server = start_server(home)
    try:
        version, uri = publish(home, fit(breast_cancer, 0.001), breast_cancer, tmp_path)
        with open(Path(uri.removeprefix("file://")) / "model.joblib", "ab") as model_file:
            model_file.write(b"changed after upload")
        deploy(home, version, uri, canary=50)
        register_versions(home, tmp_path, [1, 2])

        from serving import local_controller

        state = wait_for(
            lambda: (
                (s := local_controller.read_state(NAME, home))["revisions"][
                    "breast-cancer-predictor-00002"
                ].get("failed")
                and s
            )
        )
        reason = state["revisions"]["breast-cancer-predictor-00002"]["failed"]["reason"]
        assert "sha256" in reason and "refusing to load" in reason
        status = state["inferenceService"]["status"]
        predictor = status["components"]["predictor"]
        # Its share stays where the deploy put it: nothing is rolled out behind the user's back.
        assert [(t["revisionName"], t["percent"]) for t in predictor["traffic"]] == [
            ("breast-cancer-predictor-00002", 50),
            ("breast-cancer-predictor-00001", 50),
        ]
        assert predictor["latestRolledoutRevision"] == "breast-cancer-predictor-00001"
        (ready,) = status["conditions"]
        assert ready["status"] == "False" and "breast-cancer-predictor-00002" in ready["message"]
        assert "sha256" in ready["message"]

        rows = v2_body(breast_cancer.drop(columns=["target"]).to_numpy()[:2])
        with httpx.Client() as http:
            answers = [http.post(f"{server.url}/v2/models/{NAME}/infer", json=rows)
                       for _ in range(100)]  # fmt: skip
            assert {a.status_code for a in answers} == {200, 503}
            assert {a.json()["model_version"] for a in answers if a.status_code == 200} == {"1"}
            pinned = http.post(f"{server.url}/v2/models/{NAME}/versions/2/infer", json=rows)
            assert pinned.status_code == 503 and int(pinned.headers["retry-after"]) >= 1
            assert "Revision 'breast-cancer-predictor-00002'" in pinned.json()["error"]
            ready = http.get(f"{server.url}/v2/models/{NAME}/versions/2/ready")
            assert ready.status_code == 503 and "failed to load" in ready.json()["error"]
            assert http.get(f"{server.url}/v2/models/{NAME}/versions/1/ready").status_code == 200
        table = mlops(home, "get").stdout.splitlines()
        assert table[1].split()[2] == "False"  # READY, as kubectl get isvc would show it
        promote = mlops(home, "promote")
        assert promote.returncode == 1 and "failed to load" in promote.stderr
    finally:
        server.stop()


def test_serve_says_what_to_do_when_nothing_is_deployed(tmp_path: Path) -> None:
    result = mlops(tmp_path / ".mlops", "serve", "--port", str(free_port()))
    assert result.returncode == 1
    assert "is not deployed locally" in result.stderr and "mlops run" in result.stderr


def test_serve_says_so_when_the_port_is_taken(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = mlops(tmp_path / ".mlops", "serve", "--port", str(port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


@pytest.mark.parametrize("command", ["promote", "rollback"])
def test_promote_and_rollback_refuse_when_the_registry_is_missing_while_a_model_serves(
    tmp_path: Path, breast_cancer: pd.DataFrame, command: str
) -> None:
    home = tmp_path / ".mlops"
    deploy_champion_and_canary(home, breast_cancer, tmp_path)
    from serving import local_controller

    before = local_controller.read_state(NAME, home)
    assert not (home / "mlflow.db").exists()  # removed, or never there

    result = mlops(home, command)

    assert result.returncode == 1
    message = result.stderr.strip()
    assert message == (
        f"Error: the MLflow registry {home / 'mlflow.db'} does not exist, but '{NAME}' serves "
        "versions 1 and 2: restore it (or point MLFLOW_TRACKING_URI at the registry that holds "
        "its versions); nothing changed"
    )
    assert not (home / "mlflow.db").exists()  # no empty registry created in its place
    assert local_controller.read_state(NAME, home) == before


def test_promote_refuses_an_empty_registry_while_a_model_serves(
    tmp_path: Path, breast_cancer: pd.DataFrame
) -> None:
    from mlops import registry

    home = tmp_path / ".mlops"
    deploy_champion_and_canary(home, breast_cancer, tmp_path)
    registry.prepare_local_database(f"sqlite:///{home / 'mlflow.db'}")  # tables, no versions

    result = mlops(home, "promote")

    assert result.returncode == 1
    assert f"has no registered version of '{NAME}'" in result.stderr
    assert "nothing changed" in result.stderr and "Traceback" not in result.stderr
