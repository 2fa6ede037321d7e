"""A small v2 (Open Inference Protocol) client for ``mlops predict`` and ``mlops drift``.

Plain ``httpx``, so the command line does not import KServe. Tests also use KServe's own
``InferenceRESTClient`` and ``tritonclient.http`` against the same server.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

LABEL_COLUMN = "target"


class ServingError(RuntimeError):
    """The server refused a request or cannot be reached; the message says which and why."""


@dataclass(frozen=True)
class Rows:
    """Rows to send: a matrix in the model's column order, or named columns.

    Attributes:
        values: One list per row: numbers, strings (a categorical feature) or ``None`` (a
            missing value).
        columns: Feature names when the rows came with names (sent as one tensor per feature,
            ``content_type: pd``, so the server matches them by name), else ``None``.
    """

    values: list[list[Any]]
    columns: list[str] | None = None


@dataclass(frozen=True)
class Prediction:
    """What the server answered.

    Attributes:
        outputs: ``output-0`` as nested lists (labels, or probabilities per class).
        model_version: The store version that answered.
        model_name: The model name.
        request_id: The ``x-request-id`` of the request.
    """

    outputs: list[Any]
    model_version: str
    model_name: str
    request_id: str


# The tables `mlops run` and `mlops score` read, by file suffix.
TABLE_READERS = {".csv": "read_csv", ".parquet": "read_parquet"}


def read_rows(path: Path, label_column: str = LABEL_COLUMN) -> Rows:
    """Read rows from a CSV (with a header), Parquet or JSON file, dropping the label column.

    JSON may be a list of rows (lists of numbers, or objects keyed by feature name), or an object
    with ``instances`` holding such a list.

    Raises:
        ValueError: When the file is missing, empty or not one of these shapes.
    """
    if not path.is_file():
        raise ValueError(f"{path} does not exist or is not a file")
    reader = TABLE_READERS.get(path.suffix.lower())
    if reader is not None:
        import pandas as pd

        try:
            frame = getattr(pd, reader)(path)
        except (ValueError, OSError, pd.errors.ParserError) as err:
            raise ValueError(f"{path} is not a readable table: {err}") from err
        frame = frame.drop(columns=[label_column], errors="ignore")
        if frame.empty:
            raise ValueError(f"{path} has no rows")
        return frame_rows(frame)
    if path.suffix.lower() != ".json":
        raise ValueError(f"{path} must end in .csv, .parquet or .json, got {path.suffix!r}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if isinstance(data, dict):
        data = data.get("instances")
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path} must hold a non-empty list of rows (or {{'instances': [...]}})")
    if all(isinstance(row, dict) for row in data):
        columns = [str(c) for c in data[0] if c != label_column]
        return Rows([[row.get(c) for c in columns] for row in data], columns)
    if all(isinstance(row, list) for row in data):
        return Rows(data)
    raise ValueError(f"{path}: rows must all be lists of numbers or all objects")


def frame_rows(frame: Any) -> Rows:
    """A table's rows by column name: numbers stay numbers, other values become strings.

    A missing value (NaN, None) becomes ``None``, JSON ``null`` in the request, as KServe's
    pandas codec reads a missing value.
    """
    import pandas as pd

    columns: dict[str, list[Any]] = {}
    for name in frame.columns:
        column = frame[name]
        if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
            values = column.astype(float).tolist()
            columns[str(name)] = [None if math.isnan(v) else v for v in values]
        else:
            columns[str(name)] = [None if pd.isna(v) else str(v) for v in column.tolist()]
    return Rows([list(row) for row in zip(*columns.values(), strict=True)], list(columns))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def v2_request(rows: Rows, probabilities: bool = False) -> dict[str, Any]:
    """The v2 inference request body for ``rows``.

    Named columns go as one tensor each (``content_type: pd``): FP64 when every value is a
    number or missing, else BYTES (strings; a categorical feature).
    """
    parameters: dict[str, Any] = {"predict_proba": True} if probabilities else {}
    if rows.columns is None:
        width = len(rows.values[0]) if rows.values else 0
        flat = [value for row in rows.values for value in row]
        inputs = [
            {
                "name": "input-0",
                "shape": [len(rows.values), width],
                "datatype": "FP64",
                "data": flat,
            }
        ]
    else:
        parameters["content_type"] = "pd"
        inputs = []
        for i, name in enumerate(rows.columns):
            data = [row[i] for row in rows.values]
            numeric = all(v is None or _is_number(v) for v in data)
            if not numeric:
                data = [None if v is None else str(v) for v in data]
            inputs.append(
                {
                    "name": name,
                    "shape": [len(rows.values)],
                    "datatype": "FP64" if numeric else "BYTES",
                    "data": data,
                }
            )
    body: dict[str, Any] = {"inputs": inputs}
    if parameters:
        body["parameters"] = parameters
    return body


def class_names(metadata: dict[str, Any] | None, count: int) -> list[tuple[str, str]]:
    """``(class, display name)`` per probability column, from a version's ``metadata.json``.

    ``class_names`` (parallel to ``classes``) when the version has them, else the classes
    themselves, else the training reference's classes; without any of them, the column
    numbers.
    """
    metadata = metadata or {}
    classes = metadata.get("classes")
    if not isinstance(classes, list):
        classes = (metadata.get("reference_statistics") or {}).get("classes")
    if not isinstance(classes, list) or len(classes) != count:
        return [(str(i), str(i)) for i in range(count)]
    names = metadata.get("class_names")
    if not isinstance(names, list) or len(names) != count:
        names = classes
    return [(str(c), str(n)) for c, n in zip(classes, names, strict=True)]


def prediction_lines(prediction: Prediction, classes: list[tuple[str, str]]) -> list[str]:
    """A header and one tab-separated line per row: the row number, then the answer.

    Probabilities: one column per class, headed by its name. Labels: the label, and its
    class name when that differs from the label.
    """
    rows = prediction.outputs
    if rows and isinstance(rows[0], list):
        lines = ["\t".join(["row", *(name for _, name in classes)])]
        lines += ["\t".join([str(i), *(f"{p:.4f}" for p in row)]) for i, row in enumerate(rows)]
        return lines
    named = {label: name for label, name in classes if name != label}
    if not named:
        return ["row\tlabel", *(f"{i}\t{label}" for i, label in enumerate(rows))]
    lines = ["row\tlabel\tclass_name"]
    lines += [f"{i}\t{label}\t{named.get(str(label), label)}" for i, label in enumerate(rows)]
    return lines


class V2Client:
    """Talks v2 to one model of a server."""

    def __init__(
        self, base_url: str, model_name: str, timeout_s: float = 30.0, token: str | None = None
    ) -> None:
        """Connect to ``base_url`` (e.g. ``http://127.0.0.1:8080``) for ``model_name``.

        ``token`` is sent as ``Authorization: Bearer <token>`` (``mlops serve`` with a token).
        """
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, headers=headers)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> V2Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def infer(
        self, rows: Rows, probabilities: bool = False, version: str | None = None
    ) -> Prediction:
        """Send ``rows``; ``version`` pins one revision (store version, ``latest`` or ``prev``).

        Raises:
            ServingError: When the server is unreachable or answers with an error.
        """
        path = f"/v2/models/{self.model_name}"
        path += f"/versions/{version}/infer" if version else "/infer"
        response = self._request("POST", path, json=v2_request(rows, probabilities))
        body = response.json()
        output = next((o for o in body["outputs"] if o["name"] == "output-0"), body["outputs"][0])
        data = output["data"]
        shape = output["shape"]
        if len(shape) == 2:
            data = [data[i * shape[1] : (i + 1) * shape[1]] for i in range(shape[0])]
        return Prediction(
            outputs=data,
            model_version=str(body.get("model_version", "")),
            model_name=body.get("model_name", self.model_name),
            request_id=response.headers.get("x-request-id", ""),
        )

    def metrics(self) -> str:
        """The server's ``/metrics`` text."""
        return self._request("GET", "/metrics").text

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise ServingError(
                f"cannot reach the model server at {self.base_url} ({type(err).__name__}); "
                "start it with `mlops serve` or pass --url"
            ) from err
        if response.is_error:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            if response.status_code == 401:
                message += " (set MLOPS_SERVING_TOKEN or pass --auth-token-file)"
            raise ServingError(f"{method} {path} answered {response.status_code}: {message}")
        return response


@dataclass(frozen=True)
class RevisionDrift:
    """PSI per feature of one revision, read from ``/metrics``.

    Attributes:
        revision: The revision name.
        model_version: Its store version.
        rows: Rows the statistics cover.
        psi: PSI per feature name.
    """

    revision: str
    model_version: str
    rows: int
    psi: dict[str, float]


def parse_drift(metrics_text: str, model_name: str) -> list[RevisionDrift]:
    """The ``mlops_feature_psi`` and ``mlops_drift_rows`` gauges of ``model_name``, per revision."""
    from prometheus_client.parser import text_string_to_metric_families

    psi: dict[tuple[str, str], dict[str, float]] = {}
    rows: dict[tuple[str, str], int] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != model_name:
                continue
            key = (labels.get("revision", ""), labels.get("model_version", ""))
            if sample.name == "mlops_feature_psi":
                psi.setdefault(key, {})[labels["feature"]] = sample.value
            elif sample.name == "mlops_drift_rows":
                rows[key] = int(sample.value)
    return [
        RevisionDrift(revision, version, rows.get((revision, version), 0), values)
        for (revision, version), values in sorted(psi.items())
    ]


def format_drift(drift: Sequence[RevisionDrift], top: int, min_rows: int = 1) -> str:
    """A table per revision, features by PSI, highest first.

    A revision with fewer than ``min_rows`` rows gets no verdict: "not enough rows (N of M
    needed)" (the PSI of a few rows is noise: 10 undrifted rows read 7.0).
    """
    from serving.drift import classify

    blocks = []
    for entry in drift:
        heading = f"{entry.revision} (model version {entry.model_version}): {entry.rows} rows"
        heading += " served"
        if entry.rows < min_rows:
            blocks.append(f"{heading}: not enough rows ({entry.rows} of {min_rows} needed)")
            continue
        ranked = sorted(entry.psi.items(), key=lambda item: -item[1])
        worst = ranked[0][1] if ranked else 0.0
        lines = [f"{heading}, max PSI {worst:.4f} ({classify(worst)})"]
        width = max((len(name) for name, _ in ranked[:top]), default=7)
        lines.append(f"  {'FEATURE'.ljust(width)}   PSI      STATUS")
        lines += [
            f"  {name.ljust(width)}   {value:<7.4f}  {classify(value)}"
            for name, value in ranked[:top]
        ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
