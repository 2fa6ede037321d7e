"""The ``mlops`` command line: help everywhere, kubectl's columns, and submit's contract."""

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from mlops.cli import main
from serving.deploy import deploy_inference_service
from serving.inference_service import PredictorSettings


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_has_help(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0 and "Usage: main" in result.output


def test_get_prints_the_columns_kubectl_prints(mlops_home: Path) -> None:
    for version, canary in ((1, None), (2, 10)):
        settings = PredictorSettings(name="breast-cancer",
                                     storage_uri=f"/s/breast-cancer/{version}",
                                     model_version=version, canary_traffic_percent=canary)
        deploy_inference_service(settings, "local", mlops_home)
    result = CliRunner().invoke(main, ["get", "breast-cancer"])
    header, row = result.output.splitlines()
    assert header.split() == ["NAME", "URL", "READY", "PREV", "LATEST", "PREVROLLEDOUTREVISION",
                              "LATESTREADYREVISION", "AGE"]
    cells = row.split()
    assert cells[0] == "breast-cancer" and cells[2:7] == [
        "True", "90", "10", "breast-cancer-predictor-00001", "breast-cancer-predictor-00002"]


def test_get_yaml_is_the_inference_service(mlops_home: Path) -> None:
    import yaml

    settings = PredictorSettings(name="breast-cancer", storage_uri="/s/breast-cancer/1",
                                 model_version=1)
    deploy_inference_service(settings, "local", mlops_home)
    isvc = yaml.safe_load(CliRunner().invoke(main, ["get", "-o", "yaml"]).output)
    assert isvc["kind"] == "InferenceService"
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == "/s/breast-cancer/1"


def test_get_of_an_undeployed_model_is_one_error_line(mlops_home: Path) -> None:
    result = CliRunner().invoke(main, ["get", "nope"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: InferenceService 'nope' is not deployed")


class _FakeKfpClient:
    """The KFP API cannot run here: a thin stand-in for ``kfp.Client`` at the boundary."""

    calls: list = []
    final_state = "SUCCEEDED"
    host = ""

    def __init__(self, host: str) -> None:
        self.calls.append(("host", host))

    def create_run_from_pipeline_package(self, path: str, **kwargs):  # noqa: ANN003
        self.calls.append(("create", path, kwargs))
        return SimpleNamespace(run_id="run-1")

    def wait_for_run_completion(self, run_id: str, timeout: int):
        self.calls.append(("wait", run_id, timeout))
        if self.final_state == "TIMEOUT":
            raise TimeoutError("Run timeout")  # what kfp 2.x's Client raises past `timeout`
        return SimpleNamespace(state=self.final_state)


class _KfpHealthz(BaseHTTPRequestHandler):
    """KFP's health endpoint as the API server answers it: ``GET /apis/v2beta1/healthz``,
    ``GetHealthzResponse {multi_user}`` (kubeflow/pipelines backend/api/v2beta1/healthz.proto,
    read at 028d903); every other path 404, as KFP's gateway answers an unknown route."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        found = self.path == "/apis/v2beta1/healthz"
        body = json.dumps({"multi_user": False} if found else {"error": "Not Found"}).encode()
        self.send_response(200 if found else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def kfp_healthz() -> Iterator[str]:
    """A local server answering KFP's health check (the stand-in client does the rest)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KfpHealthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def fake_kfp(monkeypatch: pytest.MonkeyPatch, kfp_healthz: str) -> type[_FakeKfpClient]:
    import kfp

    _FakeKfpClient.calls = []
    _FakeKfpClient.final_state = "SUCCEEDED"
    _FakeKfpClient.host = kfp_healthz
    monkeypatch.setattr(kfp, "Client", _FakeKfpClient)
    return _FakeKfpClient


def test_submit_runs_the_compiled_pipeline_for_the_cluster(fake_kfp) -> None:
    result = CliRunner().invoke(main, ["submit", "--host", fake_kfp.host,
                                       "--label-noise", "0.5", "--timeout", "60"])
    assert result.exit_code == 0, result.output
    assert f"{fake_kfp.host}/#/runs/details/run-1" in result.output
    (_, host), (_, path, kwargs), (_, run_id, timeout) = fake_kfp.calls
    assert host == fake_kfp.host and run_id == "run-1" and timeout == 60
    assert path.endswith("pipelines/compiled/training_pipeline.yaml")
    arguments = kwargs["arguments"]
    assert arguments["deploy_target"] == "kubernetes" and arguments["label_noise"] == 0.5
    assert arguments["store_uri"] == "s3://models"
    assert arguments["service_account"] == "kserve-minio-sa"
    assert arguments["rollout_steps"] == ""  # manual unless asked


def test_a_failed_kfp_run_is_a_non_zero_exit_with_its_url(fake_kfp) -> None:
    fake_kfp.final_state = "FAILED"
    result = CliRunner().invoke(main, ["submit", "--host", fake_kfp.host])
    assert result.exit_code == 1
    url = f"{fake_kfp.host}/#/runs/details/run-1"
    assert f"error: run run-1 ended FAILED; see {url}" in result.output


def test_a_kfp_run_outlasting_the_timeout_is_one_line_with_its_url(fake_kfp) -> None:
    fake_kfp.final_state = "TIMEOUT"
    result = CliRunner().invoke(main, ["submit", "--host", fake_kfp.host, "--timeout", "5"])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        f"error: run run-1 did not finish within --timeout 5 s; it goes on in KFP: "
        f"see {fake_kfp.host}/#/runs/details/run-1"
    )


def test_submit_sets_the_pipelines_rollout_step_parameters(fake_kfp) -> None:
    result = CliRunner().invoke(main, ["submit", "--host", fake_kfp.host, "--rollout-steps",
                                       "10,50,100", "--rollout-interval", "30",
                                       "--rollout-min-requests", "20"])  # fmt: skip
    assert result.exit_code == 0, result.output
    arguments = fake_kfp.calls[1][2]["arguments"]
    assert arguments["rollout_steps"] == "10,50,100"
    assert arguments["rollout_interval_s"] == 30.0 and arguments["rollout_min_requests"] == 20


def test_submit_refuses_a_bad_rollout_steps_before_creating_a_run(fake_kfp) -> None:
    result = CliRunner().invoke(main, ["submit", "--host", fake_kfp.host,
                                       "--rollout-steps", "50,10"])  # fmt: skip
    assert result.exit_code == 1
    assert result.output.startswith("error: parameter rollout_steps='50,10' is invalid: expected")
    assert fake_kfp.calls == []  # no client, no run, nothing deployed


def test_the_e2e_submits_a_command_line_that_submit_accepts(fake_kfp) -> None:
    from tests.e2e.test_cluster_canary_analysis import ROLLOUT_STEP_ARGS, STEPS, submit_arguments

    result = CliRunner().invoke(main, submit_arguments(fake_kfp.host, *ROLLOUT_STEP_ARGS))
    assert result.exit_code == 0, result.output
    arguments = fake_kfp.calls[1][2]["arguments"]
    assert arguments["rollout_steps"] == ",".join(map(str, STEPS))
    assert arguments["namespace"] == "kubeflow-user" and arguments["canary_traffic_percent"] == 10


def test_run_refuses_a_model_name_that_escapes_the_store(mlops_home: Path) -> None:
    result = CliRunner().invoke(main, ["run", "--model-name", "../../x-escape"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: parameter model_name='../../x-escape' is invalid")
    assert not mlops_home.exists()
    assert not (mlops_home.parent.parent / "x-escape").exists()


def test_submit_refuses_bad_parameters_before_creating_a_run(fake_kfp) -> None:
    result = CliRunner().invoke(main, ["submit", "--host", fake_kfp.host, "--namespace", "Bad_NS"])
    assert result.exit_code == 1
    assert result.output.startswith("error: parameter namespace='Bad_NS' is invalid")
    assert fake_kfp.calls == []  # no client, no run


def _deploy_version_1(home: Path, tiny_model) -> Path:
    """A real published and locally deployed version 1; returns its folder."""
    import joblib

    from mlops.store import LocalStore

    model_file = home.parent / "model.joblib"
    joblib.dump(tiny_model[0], model_file)
    store = LocalStore(home / "store")
    store.publish("breast-cancer", model_file, {"sha256": "x"})
    settings = PredictorSettings(name="breast-cancer",
                                 storage_uri=store.version_uri("breast-cancer", 1),
                                 model_version=1)
    deploy_inference_service(settings, "local", home)
    return home / "store" / "breast-cancer" / "1"


def test_run_stops_on_a_corrupt_state_file_before_writing(mlops_home: Path, tiny_model) -> None:
    _deploy_version_1(mlops_home, tiny_model)
    state = mlops_home / "serving" / "breast-cancer.yaml"
    state.write_text("inferenceService: [unclosed\n")
    result = CliRunner().invoke(main, ["run"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(state) in lines[0]
    assert sorted(p.name for p in (mlops_home / "store" / "breast-cancer").iterdir()) == ["1"]
    assert not (mlops_home / "mlflow.db").exists()


def test_run_stops_on_a_corrupt_served_metadata_before_writing(
    mlops_home: Path, tiny_model
) -> None:
    folder = _deploy_version_1(mlops_home, tiny_model)
    (folder / "metadata.json").write_text("{not json")
    result = CliRunner().invoke(main, ["run"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(folder / "metadata.json") in lines[0]
    assert sorted(p.name for p in (mlops_home / "store" / "breast-cancer").iterdir()) == ["1"]
    assert not (mlops_home / "mlflow.db").exists()


def test_run_names_a_missing_served_metadata_file_by_its_path(mlops_home: Path, tiny_model) -> None:
    folder = _deploy_version_1(mlops_home, tiny_model)
    (folder / "metadata.json").unlink()
    result = CliRunner().invoke(main, ["run"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"file://{folder}/metadata.json is unreadable" in lines[0]
    assert not (mlops_home / "mlflow.db").exists()


def test_a_kfp_api_refusal_is_one_line_with_its_status(kfp_healthz: str) -> None:
    # The real kfp.Client: the stand-in answers its health check, then 404 for the experiments.
    result = CliRunner().invoke(main, ["submit", "--host", kfp_healthz])
    assert result.exit_code == 1
    assert result.output.splitlines() == ["error: the KFP API answered 404 Not Found: Not Found"]
