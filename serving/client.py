"""A small v2 (Open Inference Protocol) client for ``mlops predict`` and ``mlops drift``.

Plain ``httpx``, so the command line does not import KServe. Tests also use KServe's own
``InferenceRESTClient`` and ``tritonclient.http`` against the same server.
"""

from __future__ import annotations

import json
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
        values: One list of values per row: numbers, strings (categorical columns) or
            ``None`` (missing).
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


def read_rows(path: Path, label_column: str = LABEL_COLUMN) -> Rows:
    """Read rows from a CSV (with a header) or JSON file, dropping the label column if present.

    JSON may be a list of rows (lists of numbers, or objects keyed by feature name), or an object
    with ``instances`` holding such a list.

    Raises:
        ValueError: When the file is missing, empty or not one of these shapes.
    """
    if not path.is_file():
        raise ValueError(f"{path} does not exist or is not a file")
    if path.suffix.lower() == ".csv":
        import pandas as pd

        frame = pd.read_csv(path).drop(columns=[label_column], errors="ignore")
        if frame.empty:
            raise ValueError(f"{path} has no rows")
        # Numbers stay numbers, text stays text (a categorical column), empty cells are None.
        values = frame.astype(object).where(frame.notna(), None).to_numpy().tolist()
        return Rows(values, [str(c) for c in frame.columns])
    if path.suffix.lower() != ".json":
        raise ValueError(f"{path} must end in .csv or .json, got {path.suffix!r}")
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
        return Rows([[row[c] for c in columns] for row in data], columns)
    if all(isinstance(row, list) for row in data):
        return Rows(data)
    raise ValueError(f"{path}: rows must all be lists of numbers or all objects")


def v2_request(rows: Rows, probabilities: bool = False) -> dict[str, Any]:
    """The v2 inference request body for ``rows``."""
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
        # KServe's pandas codec: one tensor per column, BYTES for text, null for missing.
        parameters["content_type"] = "pd"
        inputs = []
        for i, name in enumerate(rows.columns):
            column = [_json_value(row[i]) for row in rows.values]
            text = any(isinstance(v, str) for v in column)
            inputs.append(
                {
                    "name": name,
                    "shape": [len(rows.values)],
                    "datatype": "BYTES" if text else "FP64",
                    "data": [str(v) if text and v is not None else v for v in column],
                }
            )
    body: dict[str, Any] = {"inputs": inputs}
    if parameters:
        body["parameters"] = parameters
    return body


def _json_value(value: Any) -> Any:
    """A cell as JSON takes it: NaN (a missing number) is ``None``, numpy scalars plain."""
    if isinstance(value, float) and value != value:
        return None
    return value.item() if hasattr(value, "item") else value


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


def format_drift(drift: Sequence[RevisionDrift], top: int) -> str:
    """A table per revision, features by PSI, highest first."""
    from serving.drift import classify

    blocks = []
    for entry in drift:
        ranked = sorted(entry.psi.items(), key=lambda item: -item[1])
        worst = ranked[0][1] if ranked else 0.0
        lines = [
            f"{entry.revision} (model version {entry.model_version}): {entry.rows} rows served, "
            f"max PSI {worst:.4f} ({classify(worst)})"
        ]
        width = max((len(name) for name, _ in ranked[:top]), default=7)
        lines.append(f"  {'FEATURE'.ljust(width)}   PSI      STATUS")
        lines += [
            f"  {name.ljust(width)}   {value:<7.4f}  {classify(value)}"
            for name, value in ranked[:top]
        ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
