"""What a model takes: its features, their kinds, and the v2 pandas codec that carries a table.

A version's ``metadata.json`` says (all optional, so old versions read as all numeric):
``feature_types`` (``numeric`` / ``categorical`` per feature), ``input_kind`` (``tensor``: a
float matrix in ``feature_names`` order; ``dataframe``: a pandas DataFrame with exactly the
columns ``feature_names``, in that order) and ``label_datatype``. A table arrives as KServe's
pandas codec: ``parameters.content_type: "pd"`` and one tensor per column, named as the
column, BYTES for strings, JSON ``null`` for a missing value (kserve v0.20.0
``python/kserve/kserve/utils/utils.py`` ``get_predict_input`` ->
``python/kserve/kserve/protocol/infer_type.py`` ``InferRequest.as_dataframe``). Here the
columns are matched by name, checked and put into ``feature_names`` order before the model
sees them; every refusal is one ``InvalidInput`` (400) naming the column, never a value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest

NUMERIC = "numeric"
CATEGORICAL = "categorical"
TENSOR = "tensor"
DATAFRAME = "dataframe"
# What a label's v2 datatype is, from the kind of the model's classes.
LABEL_DATATYPES = ("INT64", "BYTES", "BOOL")
# v2 datatypes a numeric feature can arrive in (BOOL, BYTES and FP16 carry no valid features:
# FP16 over JSON is refused by KServe itself).
NUMERIC_DATATYPES = (
    "FP32",
    "FP64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
)
# Every v2 datatype name: a request's datatype is named in a message only when it is one of
# these, so a message never carries what a client made up.
_V2_DATATYPES = (*NUMERIC_DATATYPES, "BOOL", "BYTES", "FP16")
_NAME_CHARS = 40
_LISTED = 5


def quoted(name: object) -> str:
    """``name`` quoted for a message, cut short: never more of the request than that."""
    text = str(name)
    return repr(text if len(text) <= _NAME_CHARS else f"{text[:_NAME_CHARS]}...")


def datatype_named(datatype: object) -> str:
    """A request's datatype for a message: its name when it is a v2 datatype, else not."""
    if datatype in _V2_DATATYPES:
        return f"datatype {datatype!r}"
    return "a datatype that is not a v2 datatype"


@dataclass(frozen=True)
class FeatureSchema:
    """The features a model takes and how.

    Attributes:
        names: Feature names, in the order the model was trained on.
        types: ``numeric`` or ``categorical`` per feature.
        input_kind: ``tensor`` (a float matrix) or ``dataframe`` (a pandas DataFrame).
        allow_missing: Whether the model imputes missing values itself (NaN reaches it).
    """

    names: list[str]
    types: dict[str, str] = field(default_factory=dict)
    input_kind: str = TENSOR
    allow_missing: bool = False

    @property
    def numeric_names(self) -> list[str]:
        """The numeric features, in model order (the drift and input signals' columns)."""
        return [n for n in self.names if self.types.get(n, NUMERIC) == NUMERIC]

    @property
    def numeric_columns(self) -> list[int]:
        """The positions of the numeric features."""
        return [i for i, n in enumerate(self.names) if self.types.get(n, NUMERIC) == NUMERIC]


def schema_of(metadata: dict[str, Any], feature_names: list[str], model: Any) -> FeatureSchema:
    """The schema of a loaded version, from its metadata (old versions: all numeric tensors).

    Raises:
        ValueError: When ``feature_types`` or ``input_kind`` hold something else than the
            contract's values, or a categorical feature is served as a tensor.
    """
    raw_types = metadata.get("feature_types") or {}
    if not isinstance(raw_types, dict):
        raise ValueError("metadata.json 'feature_types' must map feature names to kinds")
    types = {name: str(raw_types.get(name, NUMERIC)) for name in feature_names}
    wrong = sorted({t for t in types.values() if t not in (NUMERIC, CATEGORICAL)})
    if wrong:
        raise ValueError(
            f"metadata.json 'feature_types' holds {wrong[:3]}: each must be "
            f"{NUMERIC!r} or {CATEGORICAL!r}"
        )
    kind = str(metadata.get("input_kind") or TENSOR)
    if kind not in (TENSOR, DATAFRAME):
        raise ValueError(f"metadata.json 'input_kind' must be {TENSOR!r} or {DATAFRAME!r}")
    if kind == TENSOR and CATEGORICAL in types.values():
        raise ValueError(
            f"metadata.json says input_kind {TENSOR!r} but lists categorical features: a model "
            f"with categorical features takes a {DATAFRAME!r}"
        )
    allow = kind == DATAFRAME or imputes_missing(model)
    return FeatureSchema(list(feature_names), types, kind, allow)


def imputes_missing(model: Any) -> bool:
    """Whether NaN may reach ``model``: an imputer comes before anything that refuses NaN.

    scikit-learn's ``allow_nan`` tag says whether an estimator takes NaN itself (a
    ``HistGradientBoostingClassifier`` does, a ``StandardScaler`` passes it on, a
    ``LogisticRegression`` does not); a ``Pipeline`` has no such tag of its own.
    """
    from sklearn.impute import KNNImputer, SimpleImputer
    from sklearn.pipeline import Pipeline

    steps = [s for _, s in model.steps] if isinstance(model, Pipeline) else [model]
    for step in steps:
        if step in (None, "passthrough"):
            continue
        if isinstance(step, SimpleImputer | KNNImputer):
            return True
        if not _tags(step).get("allow_nan", False):
            return False
    return True


def _tags(estimator: Any) -> dict[str, Any]:
    get_tags = getattr(estimator, "_get_tags", None)
    return get_tags() if callable(get_tags) else {}


def label_datatype(metadata: dict[str, Any], classes: np.ndarray) -> str:
    """The v2 datatype of a predicted label: the metadata's, else from the classes' dtype."""
    recorded = metadata.get("label_datatype")
    if recorded in LABEL_DATATYPES:
        return str(recorded)
    if classes.dtype == bool:
        return "BOOL"
    if np.issubdtype(classes.dtype, np.integer):
        return "INT64"
    if np.issubdtype(classes.dtype, np.floating) and all(float(c).is_integer() for c in classes):
        return "INT64"
    return "BYTES"


def as_labels(result: np.ndarray, datatype: str) -> np.ndarray:
    """Predicted labels in the numpy dtype KServe's codec maps to ``datatype``."""
    if datatype == "BOOL":
        return result.astype(bool)
    if datatype == "INT64":
        return result.astype(np.int64)
    # Python strings in an object array: KServe's encoder writes them as JSON strings.
    return np.array([str(v) for v in result.tolist()], dtype=object)


def is_pandas_request(request: InferRequest) -> bool:
    """Whether a v2 request uses the pandas codec (``parameters.content_type: "pd"``)."""
    parameters = request.parameters or {}
    value = parameters.get("content_type") if isinstance(parameters, dict) else None
    return value == "pd"


def table_columns(inputs: list[InferInput], schema: FeatureSchema) -> dict[str, list[Any]]:
    """The request's columns by name, checked, in ``schema.names`` order.

    Numeric columns hold floats (NaN for a missing value), categorical ones ``str`` or
    ``None``.

    Raises:
        InvalidInput: On a missing or unknown column, a wrong datatype or shape, columns of
            different lengths, a value that does not fit its column, or a missing value the
            model cannot take.
    """
    by_name: dict[str, InferInput] = {}
    for tensor in inputs:
        if tensor.name in by_name:
            raise InvalidInput(f"content_type 'pd': column {quoted(tensor.name)} is sent twice")
        by_name[tensor.name] = tensor
    missing = [n for n in schema.names if n not in by_name]
    unknown = [n for n in by_name if n not in set(schema.names)]
    if missing or unknown:
        raise InvalidInput(_column_mismatch(missing, unknown, schema.names))
    columns = {name: _column(by_name[name], schema) for name in schema.names}
    rows = sorted({len(c) for c in columns.values()})
    if len(rows) > 1:
        raise InvalidInput(
            f"content_type 'pd': the columns have different row counts {rows[:5]}: "
            "every column holds one value per row"
        )
    if rows[0] == 0:
        raise InvalidInput("content_type 'pd': the columns hold no rows")
    return columns


def _column_mismatch(missing: list[str], unknown: list[str], names: list[str]) -> str:
    parts = []
    if missing:
        more = f" and {len(missing) - _LISTED} more" if len(missing) > _LISTED else ""
        listed = ", ".join(quoted(n) for n in missing[:_LISTED])
        parts.append(f"missing column{'s' if len(missing) > 1 else ''} {listed}{more}")
    if unknown:
        more = f" and {len(unknown) - _LISTED} more" if len(unknown) > _LISTED else ""
        listed = ", ".join(quoted(n) for n in unknown[:_LISTED])
        parts.append(f"unknown column{'s' if len(unknown) > 1 else ''} {listed}{more}")
    return (
        f"content_type 'pd' needs one input tensor per feature, named as the feature: "
        f"{'; '.join(parts)} (the model takes {len(names)} columns: {feature_list(names)})"
    )


def feature_list(names: list[str]) -> str:
    """Feature names for a message: all of up to four, else the first two and the last."""
    if len(names) <= 4:
        return ", ".join(quoted(n) for n in names)
    return f"{quoted(names[0])}, {quoted(names[1])}, ..., {quoted(names[-1])}"


def _column(tensor: InferInput, schema: FeatureSchema) -> list[Any]:
    name = tensor.name
    where = f"column {quoted(name)}"
    shape = list(tensor.shape)
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
        raise InvalidInput(f"{where} has shape {shape[:4]}: expected [rows] or [rows, 1]")
    values = _values(tensor)
    if len(values) != math.prod(shape):
        raise InvalidInput(
            f"{where}: shape {shape} needs {math.prod(shape)} values, but 'data' has {len(values)}"
        )
    column: list[Any]
    if schema.types.get(name, NUMERIC) == CATEGORICAL:
        column = _categorical(values, tensor.datatype, where)
        has_missing = any(v is None for v in column)
    else:
        column = _numeric(values, tensor.datatype, where)
        has_missing = any(math.isnan(v) for v in column)
    if has_missing and not schema.allow_missing:
        raise InvalidInput(
            f"{where} has a missing value (null): this model was trained without missing "
            "values and has no imputer; send a value in every row"
        )
    return column


def _values(tensor: InferInput) -> list[Any]:
    data = tensor.data
    if isinstance(data, list):
        if data and isinstance(data[0], list):
            data = [v for row in data for v in (row if isinstance(row, list) else [row])]
        return list(data)
    try:  # binary extension: KServe decodes the bytes to an array
        return list(np.asarray(tensor.as_numpy()).ravel().tolist())
    except (ValueError, TypeError) as err:
        raise InvalidInput(
            f"column {quoted(tensor.name)}: 'data' cannot be read as "
            f"{datatype_named(tensor.datatype)}"
        ) from err


def _numeric(values: list[Any], datatype: Any, where: str) -> list[float]:
    if datatype not in NUMERIC_DATATYPES:
        raise InvalidInput(
            f"{where} is numeric but has {datatype_named(datatype)}: send it as FP64 (or "
            "another numeric v2 datatype), null for a missing value"
        )
    column = []
    for row, value in enumerate(values):
        if value is None:
            column.append(math.nan)
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"{where}, row {row}: a {type(value).__name__}, not a number")
        number = float(value)
        if math.isinf(number):
            raise InvalidInput(f"{where}, row {row}: infinity is not a valid feature value")
        column.append(number)  # a NaN literal counts as missing, as null does
    return column


def _categorical(values: list[Any], datatype: Any, where: str) -> list[str | None]:
    if datatype != "BYTES":
        raise InvalidInput(
            f"{where} is categorical but has {datatype_named(datatype)}: send it as BYTES "
            "(JSON strings), null for a missing value"
        )
    column: list[str | None] = []
    for row, value in enumerate(values):
        if value is None or isinstance(value, str):
            column.append(value)
        elif isinstance(value, bytes):
            column.append(value.decode("utf-8", "replace"))
        else:
            raise InvalidInput(f"{where}, row {row}: a {type(value).__name__}, not a string")
    return column


def as_frame(columns: dict[str, list[Any]], schema: FeatureSchema) -> Any:
    """A pandas DataFrame of exactly ``schema.names``, in that order (what KServe would build).

    Numeric columns are float64 (NaN for missing), categorical ones object (``None``).
    """
    import pandas as pd

    return pd.DataFrame(
        {
            name: pd.Series(
                columns[name],
                dtype=object if schema.types.get(name) == CATEGORICAL else np.float64,
            )
            for name in schema.names
        },
        columns=schema.names,
    )


def records_columns(rows: list[Any], schema: FeatureSchema, key: str) -> dict[str, list[Any]]:
    """v1 ``instances`` of objects keyed by feature name, as columns (``table_columns``' shape).

    Raises:
        InvalidInput: As ``table_columns`` (the v1 rows named instead of tensors).
    """
    inputs = []
    for name in schema.names:
        values = []
        for index, row in enumerate(rows):
            if not isinstance(row, dict):
                raise InvalidInput(f"'{key}[{index}]' must be an object keyed by feature name")
            values.append(row.get(name))
        numeric = schema.types.get(name, NUMERIC) == NUMERIC
        inputs.append(InferInput(name, [len(rows)], "FP64" if numeric else "BYTES", values))
    extra = sorted({k for row in rows if isinstance(row, dict) for k in row} - set(schema.names))
    if extra:
        raise InvalidInput(_column_mismatch([], extra, schema.names))
    absent = [n for n in schema.names if not any(isinstance(r, dict) and n in r for r in rows)]
    if absent:
        raise InvalidInput(_column_mismatch(absent, [], schema.names))
    return table_columns(inputs, schema)
