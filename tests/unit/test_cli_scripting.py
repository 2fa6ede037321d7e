"""The command line a user scripts against: one line per unreachable endpoint, one model-name
spelling, rollout_steps refused before anything is deployed, predict's and drift's output."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from mlops.cli import main
from mlops.cli.errors import unreachable_message
from mlops.parameters import ParameterError, check_parameters
from serving.deploy import deploy_inference_service
from serving.inference_service import PredictorSettings

MLOPS = str(Path(sys.executable).parent / "mlops")
# Commands that act on one model (compile builds files, release/score/deploy take a VERSION too).
MODEL_COMMANDS = ("run", "submit", "score", "serve", "predict", "drift", "get", "promote",
                  "rollback", "rollout", "deploy", "release")  # fmt: skip


def _closed_port() -> int:
    """A port nothing listens on (bound, then closed): connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mlops(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    environ = {**os.environ, **(env or {})}
    return subprocess.run([MLOPS, *args], capture_output=True, text=True, env=environ, timeout=120)


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def not_kfp(tmp_path: Path) -> Iterator[str]:
    """A web server that is not KFP: every API path answers 404."""
    handler = partial(_QuietFiles, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# --- one line for an unreachable endpoint ---


def test_submit_to_an_unreachable_host_is_one_line_naming_the_kfp_endpoint() -> None:
    host = f"http://127.0.0.1:{_closed_port()}"
    result = _mlops("submit", "--host", host)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: cannot reach the KFP API at {host} (Connection refused): check --host "
        "(KFP_HOST) and the port-forward: kubectl port-forward -n kubeflow svc/ml-pipeline-ui "
        "8888:80"
    ]


def test_submit_to_a_host_that_is_not_kfp_says_so_at_once(not_kfp: str) -> None:
    started = time.monotonic()
    result = _mlops("submit", "--host", not_kfp)
    assert time.monotonic() - started < 20  # kfp.Client alone retries 5 times, 5 s apart
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {not_kfp} is not the KFP API: GET {not_kfp}/apis/v2beta1/"
                           "healthz answered 404 ")
    assert "give --host the KFP endpoint" in line


@pytest.mark.filterwarnings("ignore:This client only works:FutureWarning")
def test_the_kfp_clients_own_connection_failure_reads_as_one_line() -> None:
    import kfp

    host = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(Exception) as raised:  # noqa: PT011 - whatever kfp raises (urllib3's)
        kfp.Client(host=host)
    assert type(raised.value).__module__.startswith("urllib3")
    assert unreachable_message(raised.value, "get") == (
        f"cannot reach the KFP API at {host} (Connection refused): check --host (KFP_HOST) and "
        "the port-forward: kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8888:80"
    )


def test_promote_with_an_unreachable_mlflow_is_one_line_naming_it(mlops_home: Path) -> None:
    for version, canary in ((1, None), (2, 10)):
        settings = PredictorSettings(name="breast-cancer",
                                     storage_uri=f"/s/breast-cancer/{version}",
                                     model_version=version, canary_traffic_percent=canary)
        deploy_inference_service(settings, "local", mlops_home)
    tracking = f"http://127.0.0.1:{_closed_port()}"
    result = CliRunner().invoke(main, ["promote"], env={
        "MLFLOW_TRACKING_URI": tracking, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})  # fmt: skip
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"error: cannot reach the MLflow tracking server at {tracking} (Connection refused): "
        "check MLFLOW_TRACKING_URI (mlops release: the environment's tracking_uri) and that "
        "the server runs"
    ]


def test_release_with_an_unreachable_mlflow_is_one_line_naming_it(
    mlops_home: Path, tmp_path: Path, tiny_model
) -> None:
    import joblib

    from mlops.store import LocalStore, sha256_file

    model_file = tmp_path / "model.joblib"
    joblib.dump(tiny_model[0], model_file)
    dev = LocalStore(tmp_path / "dev")
    dev.publish("breast-cancer", model_file,
                {"sha256": sha256_file(model_file), "mlflow_run_id": "run-1"})  # fmt: skip
    tracking = f"http://127.0.0.1:{_closed_port()}"
    config = tmp_path / "environments.yaml"
    config.write_text(
        "environments:\n"
        f"  dev: {{store: {tmp_path / 'dev'}, tracking_uri: '{tracking}', target: local}}\n"
        f"  prod: {{store: {tmp_path / 'prod'}, tracking_uri: '{tracking}', target: local}}\n"
    )
    result = CliRunner().invoke(main, ["release", "1", "--environments", str(config)],
                                env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})  # fmt: skip
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        f"error: cannot reach the MLflow tracking server at {tracking} (Connection refused): "
        "check MLFLOW_TRACKING_URI (mlops release: the environment's tracking_uri) and that "
        "the server runs"
    )
    assert not (tmp_path / "prod").exists()


def test_an_error_that_is_no_connection_failure_is_not_called_one() -> None:
    try:
        raise KeyError("x")
    except KeyError as err:
        assert unreachable_message(err, "submit") is None


def test_predict_to_an_unreachable_server_keeps_its_own_one_line(tmp_path: Path) -> None:
    rows = tmp_path / "rows.json"
    rows.write_text("[[1, 2, 3]]")
    url = f"http://127.0.0.1:{_closed_port()}"
    result = CliRunner().invoke(main, ["predict", str(rows), "--url", url])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"error: cannot reach the model server at {url} (ConnectError); start it with "
        "`mlops serve` or pass --url"
    ]


# --- one spelling of the model name ---


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_every_model_command_spells_the_option_model_name_with_one_help(command: str) -> None:
    from mlops.cli.options import MODEL_NAME_HELP

    assert command in main.commands
    text = CliRunner().invoke(main, [command, "--help"], terminal_width=400).output
    assert "--model-name TEXT" in text and MODEL_NAME_HELP in " ".join(text.split())
    assert "--name " not in text  # the old spelling still works, unlisted


def test_get_takes_the_name_as_argument_option_or_old_option(mlops_home: Path) -> None:
    settings = PredictorSettings(name="iris", storage_uri="/s/iris/1", model_version=1)
    deploy_inference_service(settings, "local", mlops_home)
    spellings = (["iris"], ["--model-name", "iris"], ["--name", "iris"])
    outputs = [CliRunner().invoke(main, ["get", *spelling]).output for spelling in spellings]
    assert outputs[0] == outputs[1] == outputs[2]
    assert outputs[0].splitlines()[1].startswith("iris ")


def test_two_different_model_names_are_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["get", "iris", "--model-name", "wine"])
    assert result.exit_code == 2
    assert "the model name is given twice, as 'iris' and 'wine': give it once" in result.output


# --- rollout_steps, refused before anything is deployed ---


@pytest.mark.parametrize(
    ("steps", "why"),
    [("50,10", "shares must increase"), ("0,100", "within 1..100"),
     ("10,half", "whole percents"), (",", "steps is empty")],
)  # fmt: skip
def test_a_bad_rollout_steps_is_refused_naming_the_parameter(steps: str, why: str) -> None:
    with pytest.raises(ParameterError) as refused:
        check_parameters({"rollout_steps": steps, "deploy_target": "kubernetes"})
    message = str(refused.value)
    assert message.startswith(f"parameter rollout_steps={steps!r} is invalid: expected increasing")
    assert why in message


def test_rollout_steps_with_the_local_target_is_refused() -> None:
    with pytest.raises(ParameterError, match=r"rollout_steps='10,100' .* `mlops run --rollout"):
        check_parameters({"rollout_steps": "10,100", "deploy_target": "local"})


def test_good_rollout_parameters_and_no_rollout_pass() -> None:
    check_parameters({"rollout_steps": "10,50,100", "rollout_interval_s": 30.0,
                      "rollout_min_requests": 20, "deploy_target": "kubernetes"})  # fmt: skip
    check_parameters({"rollout_steps": "", "deploy_target": "local"})


@pytest.mark.parametrize(
    ("name", "value"), [("rollout_interval_s", 0.0), ("rollout_min_requests", 0)]
)
def test_a_bad_rollout_interval_or_request_count_is_refused(name: str, value: float) -> None:
    with pytest.raises(ParameterError, match=rf"^parameter {name}={value!r} is invalid"):
        check_parameters({name: value})


def test_the_check_parameters_step_refuses_a_bad_rollout_steps() -> None:
    from components.check_parameters import check_parameters as step

    arguments = dict(model_name="breast-cancer", canary_traffic_percent=10, test_size=0.2,
                     gate_metric="accuracy", min_score=0.9, max_degradation=0.02,
                     label_noise=0.0, min_rows=100,
                     seed=42, estimator="logistic_regression", hyperparameters={"C": 1.0},
                     namespace="kubeflow-user", service_account="kserve-minio-sa",
                     deploy_target="kubernetes", rollout_interval_s=60.0,
                     rollout_min_requests=50)  # fmt: skip
    step.python_func(rollout_steps="10,50,100", **arguments)
    with pytest.raises(ParameterError, match=r"^parameter rollout_steps='100,50' is invalid"):
        step.python_func(rollout_steps="100,50", **arguments)


# --- mlops drift below its minimum ---


def test_ten_undrifted_rows_read_not_enough_rows_with_the_rollouts_minimum(
    breast_cancer: pd.DataFrame,
) -> None:
    from mlops.validation import reference_statistics
    from serving.canary_analysis import Thresholds
    from serving.client import RevisionDrift, format_drift
    from serving.drift import DriftMonitor

    features = [c for c in breast_cancer.columns if c != "target"]
    monitor = DriftMonitor(features, reference_statistics(breast_cancer, "target"))
    rows = breast_cancer[features].to_numpy(dtype=float)
    monitor.observe(rows[:10])

    def printed(minimum: int) -> str:
        psi = {f.feature: f.psi for f in monitor.report()}
        return format_drift([RevisionDrift("r-00001", "1", monitor.rows, psi)], 3, minimum)

    assert max(f.psi for f in monitor.report()) > 0.25  # what used to read "significant"
    default = main.commands["drift"].params
    (min_rows,) = [p for p in default if p.name == "min_rows"]
    assert min_rows.default == Thresholds().min_drift_rows == 200
    assert printed(min_rows.default) == (
        "r-00001 (model version 1): 10 rows served: not enough rows (10 of 200 needed)"
    )
    for start in range(10, 400, 50):
        monitor.observe(rows[start : start + 50])
    assert printed(min_rows.default).splitlines()[0].endswith("(stable)")


# --- the drift monitor reads numeric features only ---


def _mixed_reference() -> dict:
    return {
        "features": {"size": {"mean": 1.5, "bin_edges": [1.5], "bin_fractions": [0.5, 0.5]}},
        "categorical": {"colour": {"categories": ["blue", "red"], "fractions": [0.5, 0.5]}},
    }


@pytest.mark.parametrize("types", [{"size": "numeric", "colour": "categorical"}, None])
def test_the_drift_monitor_skips_categorical_features(types: dict | None) -> None:
    from serving.drift import DriftMonitor

    monitor = DriftMonitor(["colour", "size"], _mixed_reference(), feature_types=types)
    assert monitor.feature_names == ["size"]
    frame = pd.DataFrame({"colour": ["red", "blue", None, "red"], "size": [1.0, 2.0, 2.0, None]})
    monitor.observe(frame)
    monitor.observe(frame.to_numpy(dtype=object))  # a matrix in the model's column order
    (size,) = monitor.report()
    assert monitor.rows == 6  # a missing value is counted in no bin
    assert size.feature == "size" and size.served_mean == pytest.approx(5 / 3)
    assert size.psi == pytest.approx(
        (1 / 3 - 0.5) * np.log((1 / 3) / 0.5) + (2 / 3 - 0.5) * np.log((2 / 3) / 0.5)
    )


def test_a_numeric_feature_without_reference_is_still_refused() -> None:
    from serving.drift import DriftMonitor

    with pytest.raises(ValueError, match=r"no entry for features \['weight'\]"):
        DriftMonitor(["size", "weight"], _mixed_reference(), feature_types={"size": "numeric"})


# --- predict: Parquet, mixed columns, a header named by class ---


def test_predict_reads_parquet_with_string_columns_and_missing_values(tmp_path: Path) -> None:
    from serving.client import read_rows, v2_request

    path = tmp_path / "rows.parquet"
    pd.DataFrame({"colour": ["red", None], "size": [1.5, np.nan], "target": [0, 1]}).to_parquet(
        path, index=False
    )
    rows = read_rows(path)
    assert rows.columns == ["colour", "size"] and rows.values == [["red", 1.5], [None, None]]
    body = v2_request(rows)
    assert body["parameters"] == {"content_type": "pd"}
    assert body["inputs"] == [
        {"name": "colour", "shape": [2], "datatype": "BYTES", "data": ["red", None]},
        {"name": "size", "shape": [2], "datatype": "FP64", "data": [1.5, None]},
    ]


def test_predict_refuses_another_file_type_naming_the_ones_it_reads(tmp_path: Path) -> None:
    from serving.client import read_rows

    path = tmp_path / "rows.xlsx"
    path.write_text("x")
    with pytest.raises(ValueError, match=r"must end in \.csv, \.parquet or \.json, got '\.xlsx'"):
        read_rows(path)


def _answer(outputs: list) -> object:
    from serving.client import Prediction

    return Prediction(outputs, "3", "breast-cancer", "req-1")


def test_probabilities_are_headed_by_the_class_names_of_the_version() -> None:
    from serving.client import class_names, prediction_lines

    metadata = {"classes": [0, 1], "class_names": ["malignant", "benign"]}
    lines = prediction_lines(_answer([[0.1, 0.9], [0.75, 0.25]]), class_names(metadata, 2))
    assert lines == ["row\tmalignant\tbenign", "0\t0.1000\t0.9000", "1\t0.7500\t0.2500"]


def test_labels_get_their_class_name_beside_them() -> None:
    from serving.client import class_names, prediction_lines

    metadata = {"classes": [0, 1], "class_names": ["malignant", "benign"]}
    lines = prediction_lines(_answer([1, 0]), class_names(metadata, 2))
    assert lines == ["row\tlabel\tclass_name", "0\t1\tbenign", "1\t0\tmalignant"]


def test_without_class_names_the_classes_or_column_numbers_head_the_columns() -> None:
    from serving.client import class_names, prediction_lines

    old_version = {"reference_statistics": {"classes": ["setosa", "versicolor", "virginica"]}}
    assert prediction_lines(_answer([[0.2, 0.3, 0.5]]), class_names(old_version, 3))[0] == (
        "row\tsetosa\tversicolor\tvirginica"
    )
    assert prediction_lines(_answer([[0.4, 0.6]]), class_names(None, 2))[0] == "row\t0\t1"
    assert prediction_lines(_answer(["setosa"]), class_names(old_version, 3)) == [
        "row\tlabel", "0\tsetosa"]  # fmt: skip
