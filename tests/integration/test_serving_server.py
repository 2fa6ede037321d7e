"""`mlops serve` as a real process on localhost: predictions, clients, split, bad input, metrics."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.serving_helpers import (
    MLOPS,
    NAME,
    Served,
    v2_body,
    wait_for,
)

# The `canary_server` fixture: versions 1 and 2 (a 10% canary) served by one `mlops serve`.
pytest_plugins = ["tests.integration.serving_fixtures"]


def test_each_version_answers_with_the_model_files_own_predictions(canary_server: Served) -> None:
    for version, model in canary_server.models.items():
        response = httpx.post(canary_server.infer_url(version), json=v2_body(canary_server.rows))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_version"] == version
        (output,) = body["outputs"]
        assert output["name"] == "output-0"
        assert output["shape"] == [len(canary_server.rows)]
        assert output["data"] == model.predict(canary_server.rows).tolist()


def test_probabilities_are_returned_when_the_request_asks(canary_server: Served) -> None:
    rows = canary_server.rows[:7]
    response = httpx.post(canary_server.infer_url("1"), json=v2_body(rows, predict_proba=True))
    output = response.json()["outputs"][0]
    assert output["shape"] == [7, 2]
    expected = canary_server.models["1"].predict_proba(rows)
    np.testing.assert_allclose(np.reshape(output["data"], (7, 2)), expected)


def test_v1_predict_answers_like_the_sklearn_runtime(canary_server: Served) -> None:
    rows = canary_server.rows[:5]
    response = httpx.post(
        f"{canary_server.url}/v1/models/{NAME}:predict", json={"instances": rows.tolist()}
    )
    assert response.status_code == 200, response.text
    version = response.headers["x-mlops-model-version"]
    model = canary_server.models[version]
    assert response.json() == {"predictions": model.predict(rows).tolist()}


def test_tritonclient_gets_the_models_predictions(canary_server: Served) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(canary_server.url.removeprefix("http://"))
    assert client.is_server_ready() and client.is_model_ready(NAME)
    rows = canary_server.rows[:50]
    for binary in (False, True):
        tensor = triton.InferInput("input-0", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows, binary_data=binary)
        result = client.infer(NAME, [tensor], model_version="2")
        assert result.get_response()["model_version"] == "2"
        np.testing.assert_array_equal(
            result.as_numpy("output-0"), canary_server.models["2"].predict(rows)
        )
    short = triton.InferInput("input-0", [1, 29], "FP64")
    short.set_data_from_numpy(rows[:1, :29], binary_data=False)
    with pytest.raises(Exception, match="29 features per row"):
        client.infer(NAME, [short])


def test_kserve_inference_rest_client_gets_the_models_predictions(canary_server: Served) -> None:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    rows = canary_server.rows[:50]

    async def infer(binary: bool) -> tuple[np.ndarray, str]:
        client = InferenceRESTClient(RESTConfig(protocol="v2"))
        tensor = InferInput("input-0", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows, binary_data=binary)
        headers: dict[str, str] = {}
        try:
            response = await client.infer(
                canary_server.url,
                InferRequest(NAME, [tensor]),
                model_name=NAME,
                response_headers=headers,
            )
        finally:
            await client.close()
        # KServe's client drops model_version when it parses a response; the header names it.
        return response.outputs[0].as_numpy(), headers["x-mlops-model-version"]

    for binary in (False, True):
        predictions, version = asyncio.run(infer(binary))
        np.testing.assert_array_equal(predictions, canary_server.models[version].predict(rows))


def test_about_ten_percent_of_requests_reach_the_canary(canary_server: Served) -> None:
    body = json.dumps(v2_body(canary_server.rows[:1]))
    requests = 2000

    def send(_: int) -> str:
        response = client.post(
            canary_server.infer_url(), content=body, headers={"content-type": "application/json"}
        )
        response.raise_for_status()
        return str(response.json()["model_version"])

    with httpx.Client() as client, ThreadPoolExecutor(8) as pool:
        counts = Counter(pool.map(send, range(requests)))
    assert set(counts) == {"1", "2"}
    # Binomial(2000, 0.1): mean 200, sd 13.4; five sd either side fails once in ~3 million runs.
    assert 133 <= counts["2"] <= 267, counts


BAD_REQUESTS: list[tuple[str, str, dict[str, Any] | bytes, int, str]] = [
    ("broken JSON", "", b'{"inputs": [', 422, "not valid JSON"),
    ("missing field", "", {"inputs": [{"name": "x", "datatype": "FP64", "data": [1]}]}, 422,
     "inputs.0.shape: Field required"),
    ("empty inputs", "", {"inputs": []}, 400, "'inputs' is empty"),
    ("wrong shape", "", {"inputs": [{"name": "x", "shape": [30], "datatype": "FP64",
                                     "data": [0.0] * 30}]}, 400,
     r"shape \[30\]: expected \[rows, 30\]"),
    ("shape/data mismatch", "", {"inputs": [{"name": "x", "shape": [2, 30], "datatype": "FP64",
                                             "data": [0.0] * 59}]}, 400,
     r"shape \[2, 30\] needs 60 values, but 'data' has 59"),
    ("wrong datatype", "", {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "BYTES",
                                        "data": ["a"]}]}, 400, "datatype 'BYTES'"),
    ("strings as numbers", "", {"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP32",
                                            "data": ["a"] * 30}]}, 400, "cannot be read as FP32"),
    ("wrong feature count", "", {"inputs": [{"name": "x", "shape": [1, 29], "datatype": "FP64",
                                             "data": [0.0] * 29}]}, 400,
     "29 features per row .* expects 30"),
    ("NaN", "", b'{"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64", "data": [NaN'
     + b", 0" * 29 + b"]}]}", 400, "feature 'mean radius' .* is nan"),
    ("infinity", "", b'{"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64", "data": [0'
     + b", 0" * 28 + b", 1e999]}]}", 400, "feature 'worst fractal dimension' .* is inf"),
    ("unknown model", "nope", v2_body(np.zeros((1, 30))), 404, "nope"),
    ("unknown version", "versions/7", v2_body(np.zeros((1, 30))), 404, "no live version '7'"),
    ("bad predict_proba", "", v2_body(np.zeros((1, 30)), predict_proba="maybe"), 400,
     "'predict_proba' must be true or false"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("where", "body", "status", "message"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_a_bad_request_gets_a_4xx_that_names_the_problem(
    canary_server: Served, where: str, body: dict[str, Any] | bytes, status: int, message: str
) -> None:
    if where == "nope":
        url = f"{canary_server.url}/v2/models/nope/infer"
    elif where:
        url = f"{canary_server.url}/v2/models/{NAME}/{where}/infer"
    else:
        url = canary_server.infer_url()
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(url, content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["error"]
    assert re.search(message, response.json()["error"]), response.json()["error"]
    # ... and the server keeps serving.
    assert httpx.post(canary_server.infer_url(), json=v2_body(canary_server.rows[:1])).is_success


def test_an_oversized_body_gets_413_with_or_without_a_content_length(canary_server: Served) -> None:
    big = b'{"inputs": [' + b" " * (2 * 1024 * 1024) + b"]}"
    response = httpx.post(
        canary_server.infer_url(), content=big, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "limit is 1048576 bytes" in response.json()["error"]

    def chunks():  # no content-length: sent chunked
        for _ in range(40):
            yield b" " * 65536

    response = httpx.post(canary_server.infer_url(), content=chunks())
    assert response.status_code == 413
    assert httpx.post(canary_server.infer_url(), json=v2_body(canary_server.rows[:1])).is_success


def test_v1_bad_instances_get_400_naming_the_row(canary_server: Served) -> None:
    response = httpx.post(
        f"{canary_server.url}/v1/models/{NAME}:predict", json={"instances": [[1.0, 2.0]]}
    )
    assert response.status_code == 400
    assert "'instances[0]' has 2 values" in response.json()["error"]


def test_model_metadata_lists_the_live_versions(canary_server: Served) -> None:
    metadata = httpx.get(f"{canary_server.url}/v2/models/{NAME}").json()
    assert sorted(metadata["versions"]) == ["1", "2"]
    assert metadata["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 30]}]
    assert httpx.get(f"{canary_server.url}/v2/models/{NAME}/versions/prev/ready").json() == {
        "name": NAME,
        "ready": True,
    }
    assert httpx.get(f"{canary_server.url}/v2/models/{NAME}/versions/9/ready").status_code == 404


def test_each_request_is_one_json_log_line_and_counted_per_revision(canary_server: Served) -> None:
    response = httpx.post(
        canary_server.infer_url("2"),
        json=v2_body(canary_server.rows[:3]),
        headers={"x-request-id": "trace-me-123"},
    )
    assert response.headers["x-request-id"] == "trace-me-123"
    httpx.post(canary_server.infer_url("2"), json={"inputs": [], "id": "empty-456"})
    # The line is written once the response has gone out: wait for it.
    lines = wait_for(lambda: (ls := canary_server.log_lines()) and ls[-1]["status"] == 400 and ls)
    ours = [line for line in lines if line["request_id"] == "trace-me-123"]
    assert len(ours) == 1
    assert ours[0]["revision"] == "breast-cancer-predictor-00002"
    assert ours[0]["model_version"] == "2"
    assert ours[0]["status"] == 200 and ours[0]["rows"] == 3 and ours[0]["latency_ms"] > 0
    assert lines[-1]["status"] == 400 and "'inputs' is empty" in lines[-1]["error"]
    assert all(set(line) >= {"ts", "request_id", "latency_ms", "status", "rows"} for line in lines)

    samples = metric_samples(httpx.get(f"{canary_server.url}/metrics").text)
    canary = {"model": NAME, "revision": "breast-cancer-predictor-00002", "model_version": "2"}
    assert samples[("mlops_inference_requests_total", (*canary.values(), "200"))] >= 1
    assert samples[("mlops_inference_errors_total", (*canary.values(), "400"))] >= 1
    assert samples[("mlops_inference_rows_total", tuple(canary.values()))] >= 3
    assert samples[("mlops_inference_request_duration_seconds_count", tuple(canary.values()))] >= 2
    assert samples[("mlops_revision_traffic_percent", (*canary.values(), "latest"))] == 10
    assert ("mlops_feature_psi", (*canary.values(), "mean radius")) in samples


def metric_samples(text: str) -> dict[tuple[str, tuple[str, ...]], float]:
    """``{(name, label values in the order the code declares them): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    order = ("model", "revision", "model_version", "code", "tag", "feature")
    return {
        (sample.name, tuple(sample.labels[k] for k in order if k in sample.labels)): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_mlops_drift_prints_psi_per_feature_and_flags_shifted_inputs(
    canary_server: Served,
) -> None:
    shifted = canary_server.rows.copy()
    shifted[:, 0] = shifted[:, 0] * 3  # 'mean radius' far outside its training range
    # A request adds a sample of at most 100 rows; drift gets a verdict from 200 rows on.
    for _ in range(3):
        httpx.post(canary_server.infer_url("prev"), json=v2_body(shifted))
    # The worker that served the rows counts them within one poll of its state watcher (0.5 s);
    # the drift request may land on another worker.
    deadline = time.monotonic() + 10
    while True:
        result = subprocess.run(
            [MLOPS, "drift", "--url", canary_server.url, "--top", "3"],
            capture_output=True,
            text=True,
            check=True,
        )
        block = result.stdout.split("breast-cancer-predictor-00001")[1]
        first_feature = block.splitlines()[2]
        if "significant" in first_feature or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "mean radius" in first_feature and "significant" in first_feature


def test_mlops_predict_prints_predictions_and_the_version(canary_server: Served, tmp_path) -> None:
    frame_rows = canary_server.rows[:4]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(frame_rows.tolist()))
    result = subprocess.run(
        [MLOPS, "predict", str(path), "--url", canary_server.url, "--version", "1"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "version 1 answered 4 rows" in result.stdout
    assert result.stdout.splitlines()[1] == "row\tlabel"
    printed = [int(line.split("\t")[1]) for line in result.stdout.splitlines()[2:]]
    assert printed == canary_server.models["1"].predict(frame_rows).tolist()


def test_mlops_predict_sends_csv_columns_by_name_and_drops_the_label(
    canary_server: Served, breast_cancer, tmp_path
) -> None:
    frame = breast_cancer.head(6)
    shuffled = frame[list(reversed(frame.columns))]  # by name, not by position
    path = tmp_path / "rows.csv"
    shuffled.to_csv(path, index=False)
    result = subprocess.run(
        [MLOPS, "predict", str(path), "--url", canary_server.url, "--version", "2", "--proba"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "version 2 answered 6 rows" in result.stdout
    assert result.stdout.splitlines()[1] == "row\t0\t1"  # the version has no class names
    printed = [[float(p) for p in line.split("\t")[1:]]
               for line in result.stdout.splitlines()[2:]]  # fmt: skip
    expected = canary_server.models["2"].predict_proba(canary_server.rows[:6])
    np.testing.assert_allclose(printed, expected, atol=1e-4)


def test_mlops_predict_says_when_no_server_answers(tmp_path) -> None:
    path = tmp_path / "rows.json"
    path.write_text("[[1, 2, 3]]")
    result = subprocess.run(
        [MLOPS, "predict", str(path), "--url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "cannot reach the model server at http://127.0.0.1:9" in result.stderr
