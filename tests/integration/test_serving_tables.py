"""`mlops serve` with users' own tables: string labels, and a mixed table on the pandas codec.

Issue 17 items 2, 3 and 5: labels answer in the classes' v2 datatype (BYTES for strings),
the metadata says so, the pandas codec is read by column name (reordered to the model's
order, one 400 naming a missing or unknown column), drift counts numeric features only, and an
exception raised past every handler in the fast path is a 500 in the log and the metrics.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.integration.serving_helpers import NAME, ServerProcess, deploy, start_server, wait_for
from tests.integration.table_models import (
    LABEL,
    fit_mixed,
    fit_tensor,
    iris_with_names,
    mixed_table,
    pandas_request,
    publish_table,
)


@dataclass(frozen=True)
class Table:
    server: ServerProcess
    model: Any
    frame: pd.DataFrame

    @property
    def infer(self) -> str:
        return f"{self.server.url}/v2/models/{NAME}/infer"

    @property
    def features(self) -> pd.DataFrame:
        return self.frame.drop(columns=[LABEL])

    def log_lines(self) -> list[dict[str, Any]]:
        text = self.server.log.read_text()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _serve(tmp: Path, model: Any, frame: pd.DataFrame) -> Iterator[Table]:
    home = tmp / ".mlops"
    deploy(home, *publish_table(home / "store", NAME, model, frame, tmp))
    server = start_server(home, "--workers", "1")
    try:
        yield Table(server, model, frame)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Table]:
    frame = iris_with_names()
    yield from _serve(tmp_path_factory.mktemp("iris"), fit_tensor(frame), frame)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Table]:
    frame = mixed_table()
    yield from _serve(tmp_path_factory.mktemp("mixed"), fit_mixed(frame), frame)


def test_string_labels_answer_as_bytes_and_the_metadata_says_so(iris: Table) -> None:
    rows = iris.features.to_numpy(dtype=float)[::10]
    tensor = {"name": "input-0", "shape": list(rows.shape), "datatype": "FP64"}
    answer = httpx.post(iris.infer, json={"inputs": [{**tensor, "data": rows.ravel().tolist()}]})
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [len(rows)]
    assert output["data"] == iris.model.predict(rows).tolist()
    assert set(output["data"]) == {"setosa", "versicolor", "virginica"}
    metadata = httpx.get(f"{iris.server.url}/v2/models/{NAME}").json()
    assert metadata["outputs"] == [{"name": "output-0", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    v1 = httpx.post(
        f"{iris.server.url}/v1/models/{NAME}:predict", json={"instances": rows.tolist()}
    )
    assert v1.json() == {"predictions": iris.model.predict(rows).tolist()}


def test_the_pandas_codec_of_a_numeric_model_is_read_by_column_name(iris: Table) -> None:
    features = iris.features.iloc[::15]
    shuffled = features[list(reversed(features.columns))]
    answer = httpx.post(iris.infer, json=pandas_request(shuffled, predict_proba=True))
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert output["datatype"] == "FP64" and output["shape"] == [len(features), 3]
    expected = iris.model.predict_proba(features.to_numpy(dtype=float))
    np.testing.assert_allclose(np.reshape(output["data"], output["shape"]), expected)


def test_a_mixed_table_with_missing_values_is_answered_as_the_model_predicts(mixed: Table) -> None:
    features = mixed.features
    assert features.isna().any().all()  # a missing value in every column
    shuffled = features[["age", "colour", "weight", "height"]]
    answer = httpx.post(mixed.infer, json=pandas_request(shuffled))
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    assert output["datatype"] == "BYTES"
    assert output["data"] == mixed.model.predict(features).tolist()
    proba = httpx.post(mixed.infer, json=pandas_request(features.iloc[:5], predict_proba=True))
    np.testing.assert_allclose(
        np.reshape(proba.json()["outputs"][0]["data"], (5, 3)),
        mixed.model.predict_proba(features.iloc[:5]),
    )


def test_the_metadata_of_a_table_model_lists_one_input_per_column(mixed: Table) -> None:
    metadata = httpx.get(f"{mixed.server.url}/v2/models/{NAME}").json()
    assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [
        ("weight", "FP64"),
        ("colour", "BYTES"),
        ("height", "FP64"),
        ("age", "FP64"),
    ]
    assert metadata["outputs"][0]["datatype"] == "BYTES"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["colour"]), "missing column 'colour'"),
        (lambda f: f.assign(extra=1.0), "unknown column 'extra'"),
        (lambda f: f.assign(colour=1.0), "column 'colour' is categorical but has datatype 'FP64'"),
        (lambda f: f.assign(age="old"), "column 'age' is numeric but has datatype 'BYTES'"),
    ],
    ids=["missing", "extra", "number-for-category", "string-for-number"],
)
def test_a_wrong_column_is_one_400_naming_it(mixed: Table, change: Any, message: str) -> None:
    answer = httpx.post(mixed.infer, json=pandas_request(change(mixed.features.iloc[:3])))
    assert answer.status_code == 400
    assert message in answer.json()["error"]


def test_a_single_tensor_to_a_table_model_is_told_to_use_the_pandas_codec(mixed: Table) -> None:
    body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1] * 4}]}
    answer = httpx.post(mixed.infer, json=body)
    assert answer.status_code == 400
    assert "parameters.content_type 'pd'" in answer.json()["error"]


def test_drift_counts_only_the_numeric_features(mixed: Table) -> None:
    httpx.post(mixed.infer, json=pandas_request(mixed.features))
    text = httpx.get(f"{mixed.server.url}/metrics").text
    psi = [line for line in text.splitlines() if line.startswith("mlops_feature_psi{")]
    features = {line.split('feature="')[1].split('"')[0] for line in psi}
    assert features == {"weight", "height", "age"}


@pytest.fixture(scope="module")
def broken_signal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Table]:
    from tests.integration.faulty_models import ProbabilitiesFail

    frame = iris_with_names()
    yield from _serve(
        tmp_path_factory.mktemp("broken"), ProbabilitiesFail(fit_tensor(frame)), frame
    )


def test_an_exception_in_the_fast_path_is_a_500_in_the_log_and_the_metrics(
    broken_signal: Table,
) -> None:
    rows = broken_signal.features.to_numpy(dtype=float)[:2].ravel().tolist()
    body = {"inputs": [{"name": "i", "shape": [2, 4], "datatype": "FP64", "data": rows}]}
    answer = httpx.post(broken_signal.infer, json=body)
    assert answer.status_code == 500
    (line,) = wait_for(lambda: broken_signal.log_lines())
    assert line["status"] == 500 and line["model_version"] == "1"
    assert line["error"] == "the server failed: RuntimeError"
    metrics = httpx.get(f"{broken_signal.server.url}/metrics").text
    counted = re.findall(r"^mlops_inference_requests_total\{([^}]*)\} (\S+)$", metrics, re.M)
    codes = {re.search(r'code="(\d+)"', labels).group(1): float(n) for labels, n in counted}
    assert codes == {"500": 1.0}  # the rollout's error rate counts codes starting with 5


def test_mlops_predict_sends_a_csv_with_text_and_empty_cells_as_the_pandas_codec(
    mixed: Table, tmp_path: Path
) -> None:
    from tests.integration.serving_helpers import mlops

    rows = mixed.frame[mixed.frame.isna().any(axis=1)].iloc[:6]
    assert rows.drop(columns=[LABEL]).isna().any().any()
    csv = tmp_path / "rows.csv"
    rows.to_csv(csv, index=False)
    result = mlops(mixed.server.log.parent, "predict", str(csv), "--url", mixed.server.url)
    assert result.returncode == 0, result.stderr
    expected = mixed.model.predict(rows.drop(columns=[LABEL])).tolist()
    answered = [line.split("\t")[-1] for line in result.stdout.splitlines() if "\t" in line]
    assert answered[-len(expected) :] == expected
