"""Requests to feature matrices: what is accepted and what each refusal says."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest

from serving.inputs import request_matrix, wants_probabilities

FEATURES = ["a", "b", "c"]


def v2(
    shape: list[int], data: list[Any], datatype: str = "FP64", **parameters: Any
) -> InferRequest:
    tensor = InferInput(name="input-0", shape=shape, datatype=datatype, data=data)
    return InferRequest("m", [tensor], parameters=parameters or None)


def test_a_v2_tensor_becomes_rows_of_features() -> None:
    matrix = request_matrix(v2([2, 3], [1, 2, 3, 4, 5, 6], "INT32"), FEATURES)
    assert matrix.dtype == np.float64
    np.testing.assert_array_equal(matrix, [[1, 2, 3], [4, 5, 6]])


def test_pandas_content_type_matches_inputs_to_features_by_name() -> None:
    inputs = [
        InferInput(name=name, shape=[2], datatype="FP32", data=values)
        for name, values in (("c", [3, 6]), ("a", [1, 4]), ("b", [2, 5]))
    ]
    request = InferRequest("m", inputs, parameters={"content_type": "pd"})
    np.testing.assert_array_equal(request_matrix(request, FEATURES), [[1, 2, 3], [4, 5, 6]])


def test_v1_instances_become_rows() -> None:
    np.testing.assert_array_equal(
        request_matrix({"instances": [[1, 2, 3]]}, FEATURES), [[1.0, 2.0, 3.0]]
    )


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (InferRequest("m", []), "'inputs' is empty"),
        (v2([3], [1, 2, 3]), r"shape \[3\]: expected \[rows, 3\]"),
        (v2([1, 2], [1, 2]), r"2 features per row \(shape \[1, 2\]\): the model expects 3"),
        (v2([0, 3], []), "has no rows"),
        (v2([2, 3], [1, 2, 3]), r"shape \[2, 3\] needs 6 values, but 'data' has 3"),
        (v2([1, 3], ["x", "y", "z"], "BYTES"), "datatype 'BYTES'"),
        (v2([1, 3], ["x", 1, 2], "FP32"), "cannot be read as FP32"),
        (v2([1, 3], [1, float("nan"), 2]), r"feature 'b' \(column 1\) is nan"),
        (v2([1, 3], [1, 2, float("inf")]), r"feature 'c' \(column 2\) is inf"),
        ({"instances": [[1, 2]]}, r"'instances\[0\]' has 2 values"),
        ({"instances": [[1, "x", 2]]}, r"'instances\[0\]\[1\]' \(feature 'b'\) is a str"),
        ({"instances": []}, "non-empty list"),
        ({"rows": [[1, 2, 3]]}, "has no 'instances'"),
        (b"raw", "not JSON"),
    ],
    ids=[
        "empty",
        "rank",
        "features",
        "no-rows",
        "size",
        "bytes",
        "strings",
        "nan",
        "inf",
        "v1-width",
        "v1-value",
        "v1-empty",
        "v1-key",
        "bytes-body",
    ],
)
def test_a_bad_request_is_refused_with_a_message_naming_the_problem(
    payload: Any, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        request_matrix(payload, FEATURES)


def test_two_tensors_without_pandas_content_type_are_refused() -> None:
    tensor = InferInput(name="x", shape=[1, 3], datatype="FP64", data=[1, 2, 3])
    other = InferInput(name="y", shape=[1, 3], datatype="FP64", data=[1, 2, 3])
    with pytest.raises(InvalidInput, match="got 2 input tensors"):
        request_matrix(InferRequest("m", [tensor, other]), FEATURES)


def test_probabilities_follow_the_request_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PREDICT_PROBA", raising=False)
    assert not wants_probabilities(v2([1, 3], [1, 2, 3]))
    assert wants_probabilities(v2([1, 3], [1, 2, 3], predict_proba=True))
    assert wants_probabilities({"instances": [], "parameters": {"predict_proba": "true"}})
    monkeypatch.setenv("PREDICT_PROBA", "true")
    assert wants_probabilities(v2([1, 3], [1, 2, 3]))
    assert not wants_probabilities(v2([1, 3], [1, 2, 3], predict_proba=False))
    with pytest.raises(InvalidInput, match="'predict_proba' must be true or false"):
        wants_probabilities(v2([1, 3], [1, 2, 3], predict_proba=3))
