"""Hostile requests against a real `mlops serve`: each a 400 naming the problem, no value logged."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.serving_helpers import NAME, Served, v2_body, wait_for

pytest_plugins = ["tests.integration.serving_fixtures"]

SECRET = "SECRET-4711"
ROWS = np.linspace(1.0, 2.0, 60).reshape(2, 30)
RAW = ROWS.tobytes()
TENSOR = {"name": "input-0", "shape": [2, 30], "datatype": "FP64"}


def binary(header: Any, payload: bytes = RAW, length: str | None = None) -> dict[str, Any]:
    encoded = json.dumps(header).encode()
    header_length = str(len(encoded)) if length is None else length
    return {
        "content": encoded + payload,
        "headers": {
            "Inference-Header-Content-Length": header_length,
            "content-type": "application/octet-stream",
        },
    }


def tensor(**changes: Any) -> dict[str, Any]:
    return {"inputs": [{**TENSOR, "parameters": {"binary_data_size": len(RAW)}, **changes}]}


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


HOSTILE: dict[str, tuple[dict[str, Any], str]] = {
    "json-nested-10k": ({"content": nested(10_000)}, "nests deeper than 1024 levels"),
    "data-nested-10k": (
        {"content": b'{"inputs":[{"name":"i","shape":[1,30],"datatype":"FP64","data":'
         + nested(10_000) + b"}]}"},
        "nests deeper than 1024 levels",
    ),
    "length-larger-than-body": (binary(tensor(), length="1000000"), "a whole number from 1"),
    "length-negative": (binary(tensor(), length="-5"), "a whole number from 1"),
    "length-not-a-number": (binary(tensor(), length="abc"), "a whole number from 1"),
    "length-smaller-than-header": (binary(tensor(), length="5"), "is not valid JSON"),
    "size-smaller-than-shape": (
        binary(tensor(parameters={"binary_data_size": 8})), "is 8 bytes, but shape"),
    "size-larger-than-shape": (
        binary(tensor(parameters={"binary_data_size": 960})), "is 960 bytes, but shape"),
    "size-not-a-number": (
        binary(tensor(parameters={"binary_data_size": "x"})), "need 'binary_data_size'"),
    "size-negative": (
        binary(tensor(parameters={"binary_data_size": -8})), "need 'binary_data_size'"),
    "body-shorter-than-sizes": (binary(tensor(), RAW[:100]), "but 100 bytes follow"),
    "shape-larger-than-data": (binary(tensor(shape=[3, 30])), r"shape \[3, 30\] of FP64 takes"),
    "shape-negative": (binary(tensor(shape=[-2, 30])), "non-negative whole numbers"),
    "shape-huge": (binary(tensor(shape=[2**62, 30])), "of FP64 takes"),
    "shape-not-a-list": (binary(tensor(shape="ab")), "needs 'shape', a list"),
    "bytes-tensor": (binary(tensor(datatype="BYTES")), "datatype 'BYTES': use a numeric"),
    "header-without-inputs": (binary({"x": 1}), "'inputs' must be a non-empty list"),
    "header-not-an-object": (binary([1, 2]), "must be an object with 'inputs'"),
    "input-not-an-object": (binary({"inputs": [1]}), r"'inputs\[0\]' must be an object"),
    "input-without-name": (
        binary({"inputs": [{"shape": [2, 30], "datatype": "FP64"}]}), "needs 'name'"),
}  # fmt: skip


def errors_with_400(served: Served) -> float:
    """``mlops_inference_errors_total`` with code 400, summed over revisions."""
    text = httpx.get(f"{served.url}/metrics").text
    samples = re.findall(r"^mlops_inference_errors_total{(.*)} (\S+)$", text, flags=re.MULTILINE)
    return sum(
        float(value)
        for labels, value in samples
        if 'code="400"' in labels and f'model="{NAME}"' in labels
    )


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_request_gets_400_naming_the_problem_and_the_server_keeps_serving(
    canary_server: Served, case: str
) -> None:
    request, message = HOSTILE[case]
    request_id = f"hostile-{case}"
    before = errors_with_400(canary_server)
    headers = {"content-type": "application/json", **request.get("headers", {})}
    headers["x-request-id"] = request_id
    response = httpx.post(
        canary_server.infer_url(), content=request["content"], headers=headers, timeout=30
    )
    assert response.status_code == 400, response.text
    assert re.search(message, response.json()["error"]), response.json()["error"]
    healthy = httpx.post(canary_server.infer_url(), json=v2_body(canary_server.rows[:1]))
    assert healthy.status_code == 200
    assert errors_with_400(canary_server) == before + 1
    line = wait_for(
        lambda: next((x for x in canary_server.log_lines() if x["request_id"] == request_id), None)
    )
    assert line["status"] == 400 and re.search(message, line["error"])


VALUE_CARRIERS: dict[str, tuple[str, dict[str, Any]]] = {
    "v2-data": ("v2", {"inputs": [{**TENSOR, "shape": [1, 30], "data": [SECRET] * 30}]}),
    "v2-mixed": ("v2", {"inputs": [{**TENSOR, "shape": [1, 30], "data": [1.0, SECRET] * 15}]}),
    "v2-proba": ("v2", v2_body(np.ones((1, 30)), predict_proba=SECRET)),
    "v1-instances": ("v1", {"instances": [[SECRET] * 30]}),
    "v1-proba": ("v1", {"instances": [[1.0] * 30], "parameters": {"predict_proba": SECRET}}),
    # A made-up datatype was echoed in the refusal (issue 19 item 8).
    "v2-datatype": ("v2", {"inputs": [{**TENSOR, "shape": [1, 30], "datatype": SECRET}]}),
}


@pytest.mark.parametrize("case", list(VALUE_CARRIERS))
def test_no_request_value_reaches_the_answer_or_the_request_log(
    canary_server: Served, case: str
) -> None:
    protocol, body = VALUE_CARRIERS[case]
    if case == "v2-datatype":
        body["inputs"][0]["data"] = [1.0] * 30
    url = (
        f"{canary_server.url}/v1/models/{NAME}:predict"
        if protocol == "v1"
        else canary_server.infer_url()
    )
    request_id = f"values-{case}"
    response = httpx.post(url, json=body, headers={"x-request-id": request_id})
    assert response.status_code == 400, response.text
    assert SECRET not in response.text
    wait_for(lambda: any(x["request_id"] == request_id for x in canary_server.log_lines()))
    assert SECRET not in canary_server.log.read_text()


def test_pandas_feature_tensors_with_different_row_counts_get_400(canary_server: Served) -> None:
    features = json.loads(
        (canary_server.home / "store" / NAME / "1" / "metadata.json").read_text()
    )["feature_names"]
    inputs = [
        {"name": name, "shape": [rows], "datatype": "FP64", "data": [1.0] * rows}
        for name, rows in zip(features, [1] + [2] * 29, strict=True)
    ]
    body = {"inputs": inputs, "parameters": {"content_type": "pd"}}
    response = httpx.post(canary_server.infer_url(), json=body)
    assert response.status_code == 400, response.text
    assert "different row counts [1, 2]" in response.json()["error"]


def _server_log(served: Served) -> str:
    port = served.url.rsplit(":", 1)[1]
    return (served.home / f"server-{port}.log").read_text()


def test_a_long_unknown_model_name_is_cut_short_in_answers_and_logs(canary_server: Served) -> None:
    name = "m" * 12_000  # under the 16 KiB header limit
    before = len(_server_log(canary_server))
    answers = [
        httpx.post(f"{canary_server.url}/v2/models/{name}/infer", json=v2_body(ROWS)),
        httpx.post(f"{canary_server.url}/v1/models/{name}:predict", json={"instances": []}),
        httpx.get(f"{canary_server.url}/v2/models/{name}/ready"),
        httpx.get(f"{canary_server.url}/v2/models/{name}"),
        httpx.post(f"{canary_server.url}/v2/models/{NAME}/versions/{name}/infer", json={}),
    ]
    for answer in answers:
        assert answer.status_code == 404, answer.text
        assert len(answer.json()["error"]) < 400, answer.text[:200]
    assert answers[0].json()["error"].startswith("Model with name 'mmm")
    # Five refusals of 12 KB names: a line each, not the names (11 MB for 27k requests).
    assert len(_server_log(canary_server)) - before < 5 * 600
    assert all(len(json.dumps(line)) < 1000 for line in canary_server.log_lines())


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_a_body_a_web_page_can_post_without_a_preflight_gets_415(
    canary_server: Served, content_type: str
) -> None:
    body = json.dumps(v2_body(ROWS)).encode()
    headers = {"content-type": content_type, "sec-fetch-site": "same-site"}
    urls = [
        canary_server.infer_url(),
        canary_server.infer_url("2"),
        f"{canary_server.url}/v1/models/{NAME}:predict",
    ]
    for url in urls:
        response = httpx.post(url, content=body, headers=headers)
        assert response.status_code == 415, (url, response.text)
        assert response.json()["error"].startswith("unsupported content type: send the request")
    # No content type from a browser either (a page's fetch() of an ArrayBuffer)...
    refused = httpx.post(
        canary_server.infer_url(), content=body, headers={"origin": "http://127.0.0.1:1"}
    )
    assert refused.status_code == 415
    # ...but JSON without a content type from a program (tritonclient sends none) still works.
    assert httpx.post(canary_server.infer_url(), content=body).status_code == 200
