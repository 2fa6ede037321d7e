"""Turn a v1 or v2 request into the feature matrix a model takes, or say exactly what is wrong.

Every check raises KServe's ``InvalidInput``, which its server answers with HTTP 400 and
``{"error": <message>}``; the message names the tensor, the field and what is allowed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest
from kserve.utils.numpy_codec import to_np_dtype

from serving.features import (
    NUMERIC_DATATYPES,
    TENSOR,
    FeatureSchema,
    as_frame,
    datatype_named,
    feature_list,
    is_pandas_request,
    records_columns,
    table_columns,
)
from serving.features import quoted as _quoted

# The request parameter that asks for class probabilities instead of labels. sklearnserver reads
# the PREDICT_PROBA environment variable for the whole server; here a request can ask for itself
# and the variable stays the default.
PROBA_PARAMETER = "predict_proba"
PROBA_ENV = "PREDICT_PROBA"
_TRUE = ("1", "true", "yes", "on")
# The binary-data extension's header: the byte length of the JSON that starts the body.
HEADER_LENGTH = "Inference-Header-Content-Length"


def wants_probabilities(payload: dict[str, Any] | InferRequest) -> bool:
    """Whether the request asks for ``predict_proba`` (``parameters.predict_proba: true``).

    Args:
        payload: A v1 body (dict) or a v2 ``InferRequest``.

    Returns:
        The request's ``predict_proba`` parameter, else the ``PREDICT_PROBA`` environment variable.

    Raises:
        InvalidInput: When the parameter is neither a boolean nor "true"/"false".
    """
    parameters = (
        payload.get("parameters") if isinstance(payload, dict) else payload.parameters
    ) or {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object, e.g. {\"predict_proba\": true}")
    value = parameters.get(PROBA_PARAMETER)
    if value is None:
        return os.environ.get(PROBA_ENV, "false").lower() in _TRUE
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (*_TRUE, "0", "false", "no", "off"):
        return value.lower() in _TRUE
    raise InvalidInput(
        f"parameter {PROBA_PARAMETER!r} must be true or false, got {type(value).__name__}"
    )


def check_binary_request(body: bytes, header_length: str) -> None:
    """Check a binary-extension request fully, so KServe's decoder can only succeed on it.

    KServe's ``InferRequest.from_bytes`` trusts the header and the sizes it names: a length that
    is not a number, a size that does not match the shape, or a header that is not a v2 request
    there end as a 500 from ``int()``, ``reshape`` or a ``KeyError``.

    Args:
        body: The whole request body: the JSON header, then the binary tensors.
        header_length: The value of the ``Inference-Header-Content-Length`` header.

    Raises:
        InvalidInput: Naming the header, field or tensor that is wrong (never a value).
    """
    if not (header_length.isascii() and header_length.isdigit()) or not (
        0 < int(header_length) <= len(body)
    ):
        raise InvalidInput(
            f"header {HEADER_LENGTH!r} must be the byte length of the JSON header at the start "
            f"of the body: a whole number from 1 to the body size ({len(body)} bytes)"
        )
    json_length = int(header_length)
    try:
        header = orjson.loads(body[:json_length])
    except orjson.JSONDecodeError as err:
        raise InvalidInput(
            f"the JSON header (the first {json_length} bytes, per {HEADER_LENGTH!r}) is not "
            f"valid JSON: {err.msg}"
        ) from err
    if not isinstance(header, dict):
        raise InvalidInput("the JSON header must be an object with 'inputs'")
    _check_header_fields(header)
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("the JSON header's 'inputs' must be a non-empty list of tensors")
    binary_bytes = 0
    for index, tensor in enumerate(inputs):
        binary_bytes += _binary_tensor_size(tensor, index)
    if binary_bytes != len(body) - json_length:
        raise InvalidInput(
            f"the binary tensors' 'binary_data_size' add up to {binary_bytes} bytes, but "
            f"{len(body) - json_length} bytes follow the JSON header ({HEADER_LENGTH!r})"
        )


def _check_header_fields(header: dict[str, Any]) -> None:
    for field, kind in (("id", str), ("parameters", dict), ("outputs", list)):
        if header.get(field) is not None and not isinstance(header[field], kind):
            raise InvalidInput(f"the JSON header's {field!r} must be a {_KINDS[kind]}")
    for output in header.get("outputs") or []:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise InvalidInput("each of the JSON header's 'outputs' must be an object with 'name'")


_KINDS = {str: "string", dict: "JSON object", list: "list"}


def _binary_tensor_size(tensor: Any, index: int) -> int:
    """The bytes a tensor of the JSON header takes after it (0 for a tensor with JSON data)."""
    where = f"'inputs[{index}]'"
    if not isinstance(tensor, dict):
        raise InvalidInput(f"{where} must be an object with 'name', 'shape' and 'datatype'")
    for field, kind in (("name", str), ("datatype", str), ("shape", list)):
        if not isinstance(tensor.get(field), kind):
            raise InvalidInput(f"{where} needs {field!r}, a {_KINDS[kind]}")
    shape = tensor["shape"]
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
        raise InvalidInput(f"{where}: 'shape' must hold non-negative whole numbers")
    if tensor["datatype"] not in NUMERIC_DATATYPES:
        raise InvalidInput(
            f"{where} has {datatype_named(tensor['datatype'])}: use a numeric datatype for a "
            f"binary tensor ({', '.join(NUMERIC_DATATYPES)}); send BYTES columns as JSON"
        )
    parameters = tensor.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidInput(f"{where}: 'parameters' must be a JSON object")
    if tensor.get("data") is not None:
        return 0
    size = (parameters or {}).get("binary_data_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInput(
            f"{where} has no 'data': its 'parameters' need 'binary_data_size', the byte size "
            "of the tensor in the body"
        )
    expected = math.prod(shape) * int(np.dtype(to_np_dtype(tensor["datatype"])).itemsize)
    if size != expected:
        raise InvalidInput(
            f"{where}: 'binary_data_size' is {size} bytes, but shape {shape} of "
            f"{tensor['datatype']} takes {expected} bytes"
        )
    return size


@dataclass(frozen=True)
class ModelInput:
    """A checked request, as the model takes it and as the signals read it.

    Attributes:
        model_input: The float matrix (``tensor`` models) or the DataFrame (``dataframe``).
        numeric: The numeric features as a float matrix (NaN for a missing value), in
            ``schema.numeric_names`` order: what drift and the input signals count.
        rows: Number of rows.
    """

    model_input: Any
    numeric: np.ndarray
    rows: int


def request_input(payload: dict[str, Any] | InferRequest, schema: FeatureSchema) -> ModelInput:
    """The request as the model takes it: a float matrix or a DataFrame in feature order.

    A ``tensor`` model takes one v2 tensor ``[rows, features]``, the pandas codec (one tensor
    per feature, by name) or v1 rows of numbers; a ``dataframe`` model takes the pandas codec
    or v1 rows as objects keyed by feature name.

    Raises:
        InvalidInput: Naming the tensor, column or field that is wrong (never a value).
    """
    if schema.input_kind == TENSOR:
        matrix = request_matrix(payload, schema.names, schema.allow_missing)
        return ModelInput(matrix, matrix, len(matrix))
    if isinstance(payload, InferRequest):
        if not is_pandas_request(payload):
            raise InvalidInput(
                "this model takes a table with categorical columns: send one input tensor per "
                "column, named as the column (BYTES for strings, FP64 for numbers, null for a "
                f"missing value), with parameters.content_type 'pd' ({feature_list(schema.names)})"
            )
        columns = table_columns(payload.inputs, schema)
    elif isinstance(payload, dict):
        key = "instances" if "instances" in payload else "inputs" if "inputs" in payload else None
        rows = payload.get(key) if key else None
        if key is None or not isinstance(rows, list) or not rows:
            raise InvalidInput(
                "v1 request has no 'instances': send {\"instances\": [{feature: value, ...}]}"
            )
        columns = records_columns(rows, schema, key)
    else:
        raise InvalidInput(_NOT_JSON)
    numeric = (
        np.column_stack([np.asarray(columns[n], dtype=np.float64) for n in schema.numeric_names])
        if schema.numeric_names
        else np.empty((len(columns[schema.names[0]]), 0))
    )
    frame = as_frame(columns, schema)
    return ModelInput(frame, np.ascontiguousarray(numeric), len(frame))


_NOT_JSON = "the request body is not JSON: send it with content-type application/json"


def request_matrix(
    payload: dict[str, Any] | InferRequest, feature_names: list[str], allow_missing: bool = False
) -> np.ndarray:
    """The ``[rows, features]`` float matrix of a request, checked against the model's features.

    Args:
        payload: A v1 body (``{"instances": [[...], ...]}``) or a v2 ``InferRequest`` with one
            tensor of shape ``[rows, features]`` (or, with ``parameters.content_type: "pd"``,
            one tensor per feature named as the feature).
        feature_names: The model's features, in the order it was trained on.
        allow_missing: Whether NaN (a missing value) may reach the model (it imputes).

    Returns:
        A C-contiguous float64 array with one row per instance.

    Raises:
        InvalidInput: On a missing or empty input, a wrong datatype, shape or feature count,
            data that does not fill the shape, or a NaN or infinite value.
    """
    if isinstance(payload, InferRequest):
        if is_pandas_request(payload):
            schema = FeatureSchema(list(feature_names), allow_missing=allow_missing)
            columns = table_columns(payload.inputs, schema)
            matrix = np.column_stack([np.asarray(columns[n]) for n in feature_names])
            matrix = np.ascontiguousarray(matrix, dtype=np.float64)
        else:
            matrix = _tensor_matrix(payload.inputs, feature_names)
    elif isinstance(payload, dict):
        matrix = _instances_matrix(payload, feature_names)
    else:
        raise InvalidInput(_NOT_JSON)
    _check_finite(matrix, feature_names, allow_missing)
    return matrix


def _tensor_matrix(inputs: list[InferInput], feature_names: list[str]) -> np.ndarray:
    n_features = len(feature_names)
    expected = f"one tensor of shape [rows, {n_features}]"
    if not inputs:
        raise InvalidInput(f"'inputs' is empty: send {expected}, e.g. named 'input-0'")
    if len(inputs) > 1:
        names = ", ".join(_quoted(i.name) for i in inputs[:5])
        raise InvalidInput(
            f"got {len(inputs)} input tensors ({names}): this model takes {expected} "
            "(or one tensor per feature with parameters.content_type 'pd')"
        )
    tensor = inputs[0]
    _check_datatype(tensor)
    shape = list(tensor.shape)
    if len(shape) != 2 or any(not isinstance(d, int) or d < 0 for d in shape):
        raise InvalidInput(
            f"input {_quoted(tensor.name)} has shape {shape[:4]}: expected [rows, {n_features}] "
            "with non-negative sizes"
        )
    if shape[1] != n_features:
        raise InvalidInput(
            f"input {_quoted(tensor.name)} has {shape[1]} features per row (shape {shape}): the "
            f"model expects {n_features} ({feature_list(feature_names)})"
        )
    if shape[0] == 0:
        raise InvalidInput(f"input {_quoted(tensor.name)} has no rows (shape {shape})")
    return _as_float_matrix(tensor, shape)


def _instances_matrix(payload: dict[str, Any], feature_names: list[str]) -> np.ndarray:
    n_features = len(feature_names)
    key = "instances" if "instances" in payload else "inputs" if "inputs" in payload else None
    if key is None:
        raise InvalidInput(
            f"v1 request has no 'instances': send {{\"instances\": [[{n_features} numbers], ...]}}"
        )
    instances = payload[key]
    if not isinstance(instances, list) or not instances:
        raise InvalidInput(f"'{key}' must be a non-empty list of rows of {n_features} numbers")
    for index, row in enumerate(instances):
        if not isinstance(row, list) or len(row) != n_features:
            size = len(row) if isinstance(row, list) else type(row).__name__
            raise InvalidInput(
                f"'{key}[{index}]' has {size} values: each row must be a list of {n_features} "
                f"numbers ({feature_list(feature_names)})"
            )
        for column, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInput(
                    f"'{key}[{index}][{column}]' (feature {feature_names[column]!r}) is a "
                    f"{type(value).__name__}: features must be numbers"
                )
    return np.asarray(instances, dtype=np.float64)


def _check_datatype(tensor: InferInput) -> None:
    if tensor.datatype not in NUMERIC_DATATYPES:
        raise InvalidInput(
            f"input {_quoted(tensor.name)} has {datatype_named(tensor.datatype)}: use a numeric "
            f"v2 datatype ({', '.join(NUMERIC_DATATYPES)})"
        )


def _as_float_matrix(tensor: InferInput, shape: list[int]) -> np.ndarray:
    expected = math.prod(shape)
    array = _flat_json_data(tensor, expected)
    if array is not None:
        return array.reshape(shape)
    try:
        array = tensor.as_numpy()
    except (ValueError, TypeError, OverflowError) as err:
        size = _data_size(tensor)
        if size is not None and size != expected:
            raise InvalidInput(
                f"input {_quoted(tensor.name)}: shape {shape} needs {expected} values, "
                f"but 'data' has {size}"
            ) from err
        # The error of numpy quotes the offending value: it stays out of the message.
        raise InvalidInput(
            f"input {_quoted(tensor.name)}: 'data' cannot be read as {tensor.datatype}: it must "
            f"be a flat list of {expected} numbers"
        ) from err
    return np.ascontiguousarray(array, dtype=np.float64).reshape(shape)


def _flat_json_data(tensor: InferInput, expected: int) -> np.ndarray | None:
    """The common case, flat JSON numbers, read a third faster than ``as_numpy`` reads them.

    ``None`` sends anything else (binary, nested, wrong size, non-numbers) to ``as_numpy``,
    whose errors the caller turns into messages.
    """
    data = tensor.data
    if not isinstance(data, list) or len(data) != expected or isinstance(data[0], list):
        return None
    dtype = to_np_dtype(tensor.datatype)
    try:
        values = np.fromiter(data, dtype=dtype, count=expected)
    except (ValueError, TypeError, OverflowError):
        return None
    return values if dtype == np.float64 else values.astype(np.float64)


def _data_size(tensor: InferInput) -> int | None:
    try:
        return int(np.asarray(tensor.data, dtype=object).size)
    except (ValueError, TypeError):
        return None


def _check_finite(matrix: np.ndarray, feature_names: list[str], allow_missing: bool) -> None:
    finite = np.isfinite(matrix)
    if finite.all():
        return
    if allow_missing:
        finite |= np.isnan(matrix)  # a missing value: the model's imputer fills it in
        if finite.all():
            return
    row, column = (int(i) for i in np.argwhere(~finite)[0])
    raise InvalidInput(
        f"row {row}, feature {feature_names[column]!r} (column {column}) is {matrix[row, column]}:"
        f" NaN and infinity are not valid feature values ({int((~finite).sum())} in the request)"
    )
