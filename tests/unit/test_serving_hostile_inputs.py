"""Hostile requests to the checks: one InvalidInput naming the problem, never a request value."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest

from serving.inputs import check_binary_request, request_matrix, wants_probabilities

FEATURES = ["a", "b", "c"]
SECRET = "SECRET-4711"
ROWS = np.arange(6, dtype=np.float64).reshape(2, 3)
TENSOR = {"name": "input-0", "shape": [2, 3], "datatype": "FP64"}


def binary_body(header: Any, payload: bytes = ROWS.tobytes()) -> tuple[bytes, str]:
    """A binary-extension body and its ``Inference-Header-Content-Length``."""
    encoded = json.dumps(header).encode()
    return encoded + payload, str(len(encoded))


def tensor(**changes: Any) -> dict[str, Any]:
    return {"inputs": [{**TENSOR, "parameters": {"binary_data_size": 48}, **changes}]}


def test_a_well_formed_binary_request_passes() -> None:
    check_binary_request(*binary_body(tensor()))


@pytest.mark.parametrize(
    ("header", "payload", "length", "message"),
    [
        (tensor(), None, "100000", "a whole number from 1 to the body size"),
        (tensor(), None, "-5", "a whole number from 1 to the body size"),
        (tensor(), None, "abc", "a whole number from 1 to the body size"),
        (tensor(), None, "0", "a whole number from 1 to the body size"),
        (tensor(), None, "5", "is not valid JSON"),
        ([1, 2], None, None, "must be an object with 'inputs'"),
        ({"x": 1}, None, None, "'inputs' must be a non-empty list"),
        ({"inputs": [1]}, None, None, r"'inputs\[0\]' must be an object"),
        ({"inputs": [{"shape": [2, 3], "datatype": "FP64"}]}, None, None, "needs 'name'"),
        (tensor(shape="ab"), None, None, "needs 'shape', a list"),
        (tensor(shape=[-2, 3]), None, None, "'shape' must hold non-negative whole numbers"),
        (tensor(shape=[2**62, 3]), None, None, r"shape \[4611686018427387904, 3\] of FP64 takes"),
        (tensor(shape=[3, 3]), None, None, "'binary_data_size' is 48 bytes, but shape"),
        (tensor(parameters={"binary_data_size": 8}), None, None, "is 8 bytes, but shape"),
        (tensor(parameters={"binary_data_size": -8}), None, None, "need 'binary_data_size'"),
        (tensor(parameters={"binary_data_size": "x"}), None, None, "need 'binary_data_size'"),
        (tensor(parameters=None), None, None, "need 'binary_data_size'"),
        (tensor(datatype="BYTES"), None, None, "datatype 'BYTES': use a numeric"),
        # A datatype that is not a v2 one is not echoed (issue 19): it is the client's text.
        (tensor(datatype="NOPE"), None, None, "a datatype that is not a v2 datatype: use a num"),
        (tensor(), ROWS.tobytes()[:20], None, "add up to 48 bytes, but 20 bytes follow"),
        (tensor(), ROWS.tobytes() * 2, None, "add up to 48 bytes, but 96 bytes follow"),
        ({**tensor(), "id": 7}, None, None, "'id' must be a string"),
        ({**tensor(), "outputs": [3]}, None, None, "'outputs' must be an object with 'name'"),
    ],
    ids=[
        "length-too-large",
        "length-negative",
        "length-not-a-number",
        "length-zero",
        "length-too-small",
        "header-not-object",
        "no-inputs",
        "input-not-object",
        "no-name",
        "shape-not-list",
        "negative-dim",
        "huge-dim",
        "shape-lies",
        "size-lies",
        "size-negative",
        "size-not-a-number",
        "size-missing",
        "bytes",
        "unknown-datatype",
        "body-short",
        "body-long",
        "id-not-string",
        "bad-outputs",
    ],
)
def test_a_lying_binary_request_is_refused_naming_the_problem(
    header: Any, payload: bytes | None, length: str | None, message: str
) -> None:
    body, true_length = binary_body(header, ROWS.tobytes() if payload is None else payload)
    with pytest.raises(InvalidInput, match=message):
        check_binary_request(body, length or true_length)


def test_a_tensor_name_is_quoted_only_in_part() -> None:
    request = InferRequest("m", [InferInput("n" * 10_000, [1, 3], "BYTES", ["x"] * 3)])
    with pytest.raises(InvalidInput) as caught:
        request_matrix(request, FEATURES)
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize(
    "payload",
    [
        InferRequest("m", [InferInput("x", [1, 3], "FP64", [1.0, SECRET, 2.0])]),
        InferRequest("m", [InferInput("x", [1, 3], "FP32", [SECRET] * 3)]),
        {"instances": [[1.0, SECRET, 2.0]]},
        {"instances": [[1.0, 2.0, 3.0]], "parameters": {"predict_proba": SECRET}},
    ],
    ids=["v2-mixed", "v2-strings", "v1-value", "proba"],
)
def test_a_refusal_never_echoes_a_request_value(payload: Any) -> None:
    with pytest.raises(InvalidInput) as caught:
        request_matrix(payload, FEATURES)
        wants_probabilities(payload)
    assert SECRET not in str(caught.value)


def test_v1_instances_with_nan_or_infinity_are_refused_naming_the_feature() -> None:
    with pytest.raises(InvalidInput, match=r"row 1, feature 'c' \(column 2\) is nan"):
        request_matrix({"instances": [[1, 2, 3], [4, 5, float("nan")]]}, FEATURES)
    with pytest.raises(InvalidInput, match=r"row 0, feature 'a' \(column 0\) is -inf"):
        request_matrix({"instances": [[float("-inf"), 2, 3]]}, FEATURES)


def test_pandas_feature_tensors_with_different_row_counts_are_refused() -> None:
    inputs = [
        InferInput(name="a", shape=[2], datatype="FP64", data=[1, 2]),
        InferInput(name="b", shape=[1], datatype="FP64", data=[1]),
        InferInput(name="c", shape=[2, 1], datatype="FP64", data=[1, 2]),
    ]
    request = InferRequest("m", inputs, parameters={"content_type": "pd"})
    with pytest.raises(InvalidInput, match=r"different row counts \[1, 2\]"):
        request_matrix(request, FEATURES)
