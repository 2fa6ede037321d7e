"""Users' own tables through the real pipeline (kfp.local) and batch scoring (issue 17).

The matrix: every offered estimator; int, text and bool labels; two and three classes; text
(categorical) columns and missing values; a built-in dataset's class names; and an imbalanced
table whose majority-only model the default gate refuses. Each case is trained once, by
``mlops run`` itself, as a model of its own name in one state directory shared by the module (one
MLflow database to create, not one per case); every batch-scored answer is compared with the
stored model's own ``predict``.

``trained_case`` hands each case's stored version and its real holdout rows to a test. The
serving half: ``served_case`` starts the real ``mlops serve`` once per case; its v2 answers (the
single-tensor form for a ``tensor`` model, the pandas codec for every model) must be the stored
model's own ``predict`` and ``predict_proba``, with the metadata's label datatype. KServe's
sklearn runtime (kserve 0.20.0 from PyPI, ``tests/integration/kserve_runtime``) loads the stored
version directory of every case and must answer the same pandas-codec request with the same
labels as ``mlops serve``.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from mlops.cli import main
from mlops.scoring import load_model
from mlops.training import model_input, types_of
from serving.client import Rows, frame_rows, v2_request
from tests.integration.kserve_runtime import start_runtime
from tests.integration.own_data_tables import (
    CASES,
    Spec,
    imbalanced_table,
    text_three_classes_mixed,
)
from tests.integration.serving_helpers import ServerProcess, mlops, start_server


@dataclass
class Trained:
    """A case after one ``mlops run``: what a scoring or serving check needs."""

    name: str
    spec: Spec
    home: Path
    output: str  # what `mlops run` printed
    exit_code: int
    storage_uri: str
    metadata: dict[str, Any]
    holdout: pd.DataFrame  # the real holdout rows of the run, label included
    label_column: str
    run_dir: Path  # the run's KFP artifacts (pipeline_root/<run>)

    def rows(self) -> pd.DataFrame:
        """The holdout's feature columns, in the model's order."""
        return self.holdout[self.metadata["feature_names"]]

    def own_predictions(self, rows: pd.DataFrame, dest: Path) -> tuple[np.ndarray, np.ndarray]:
        """The stored model's own ``predict`` and ``predict_proba`` of ``rows``."""
        model, metadata, _ = load_model(self.storage_uri, dest)
        features = model_input(rows, types_of(metadata))
        return model.predict(features), model.predict_proba(features)


def _isolated(patch: pytest.MonkeyPatch, home: Path) -> None:
    patch.setenv("MLOPS_HOME", str(home))
    for name in ("MLOPS_STORE_URI", "MLFLOW_TRACKING_URI", "MLOPS_S3_ENDPOINT", "AWS_ENDPOINT_URL"):
        patch.delenv(name, raising=False)


def _run(arguments: list[str]) -> Any:
    return CliRunner().invoke(main, ["run", *arguments], catch_exceptions=False)


def _run_in(home: Path, arguments: list[str]) -> tuple[Any, Path]:
    """``mlops run`` in ``home``; its result and the directory of its KFP artifacts."""
    before = set(home.glob("pipeline_root/*"))
    with pytest.MonkeyPatch.context() as patch:
        _isolated(patch, home)
        result = _run(arguments)
    (run_dir,) = set(home.glob("pipeline_root/*")) - before
    return result, run_dir


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The state directory every case of the module trains in (each under its own name)."""
    return tmp_path_factory.mktemp("own-data") / ".mlops"


@pytest.fixture(scope="module", params=sorted(CASES))
def trained_case(
    request: pytest.FixtureRequest, home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Trained:
    """The case trained once by ``mlops run``, as the model named after the case."""
    name: str = request.param
    spec = CASES[name]
    source = spec.source
    label = "target" if source else "label"
    if spec.table is not None:
        path = tmp_path_factory.mktemp("tables") / f"{name}{spec.suffix}"
        frame = spec.table()
        frame.to_csv(path, index=False) if spec.suffix == ".csv" else frame.to_parquet(path)
        source = str(path)
    result, run_dir = _run_in(home, [
        "--source", source, "--label-column", label, "--estimator", spec.estimator,
        "--model-name", name,
    ])
    folder = home / "store" / name / "1"
    metadata = json.loads((folder / "metadata.json").read_text()) if folder.exists() else {}
    holdout = pd.read_parquet(run_dir / "train" / "holdout")
    return Trained(name, spec, home, result.output, result.exit_code, f"file://{folder}/",
                   metadata, holdout, label, run_dir)


def test_the_run_deploys_version_1_with_the_estimator_s_own_defaults(
    trained_case: Trained,
) -> None:
    assert trained_case.exit_code == 0, trained_case.output
    assert f"model: {trained_case.name} version 1 at {trained_case.storage_uri}" in (
        trained_case.output
    )
    params = trained_case.metadata["params"]
    assert params["estimator"] == trained_case.spec.estimator
    from mlops.estimators import DEFAULT_HYPERPARAMETERS

    assert params["hyperparameters"] == DEFAULT_HYPERPARAMETERS[trained_case.spec.estimator]


def test_the_metadata_says_how_to_call_the_model_and_what_its_classes_are(
    trained_case: Trained,
) -> None:
    metadata, spec = trained_case.metadata, trained_case.spec
    assert metadata["classes"] == spec.classes
    assert [type(c) for c in metadata["classes"]] == [type(c) for c in spec.classes]
    assert metadata["class_names"] == spec.class_names
    assert metadata["label_datatype"] == spec.label_datatype
    assert metadata["input_kind"] == spec.input_kind
    types = metadata["feature_types"]
    assert set(types) == set(metadata["feature_names"])
    reference = metadata["reference_statistics"]
    numeric = [n for n in metadata["feature_names"] if types[n] == "numeric"]
    assert sorted(reference["features"]) == sorted(numeric)
    assert sorted(reference["categorical"]) == sorted(metadata["feature_categories"])
    assert reference["classes"] == spec.classes
    for example in reference["examples"]:
        assert set(example["features"]) == set(metadata["feature_names"])


def test_batch_scoring_answers_as_the_stored_model_s_own_predict(
    trained_case: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _isolated(monkeypatch, trained_case.home)
    rows = trained_case.rows()
    table = tmp_path / "rows.csv"
    rows.to_csv(table, index=False)
    output = tmp_path / "predictions.parquet"
    result = CliRunner().invoke(main, [
        "score", str(table), "--output", str(output), "--model-name", trained_case.name,
    ])
    assert result.exit_code == 0, result.output
    out = pd.read_parquet(output)
    predicted, proba = trained_case.own_predictions(rows, tmp_path / "model")
    assert out["predicted_class"].tolist() == predicted.tolist()
    columns = [f"probability_{c}" for c in trained_case.metadata["classes"]]
    np.testing.assert_allclose(out[columns].to_numpy(), proba)


def test_the_report_and_the_kfp_confusion_matrix_name_the_classes(trained_case: Trained) -> None:
    line = next(x for x in trained_case.output.splitlines() if x.startswith("report: "))
    report = Path(line.removeprefix("report: "))
    assert report.parent == trained_case.home / "reports"
    page = report.read_text()
    assert "decision: deploy" in page and "<svg" in page
    for name in trained_case.spec.class_names:
        assert f"<th>{name}</th>" in page
    executor = trained_case.run_dir / "evaluate" / "executor_output.json"
    matrix = json.loads(executor.read_text())["artifacts"]["classification"]["artifacts"][0]
    specs = matrix["metadata"]["confusionMatrix"]["annotationSpecs"]
    assert [s["displayName"] for s in specs] == trained_case.spec.class_names



@pytest.fixture(scope="module")
def imbalanced(home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The default gate on the imbalanced table, then a balanced model on balanced accuracy."""
    table = imbalanced_table(tmp_path_factory.mktemp("tables") / "fraud.csv")
    common = ["--source", str(table), "--label-column", "fraud", "--model-name", "fraud"]
    majority, _ = _run_in(home, common)
    stored_after_majority = (home / "store" / "fraud").exists()
    balanced, _ = _run_in(home, [
        *common, "--hyperparameters", '{"class_weight": "balanced"}', "--gate-metric",
        "balanced_accuracy", "--min-score", "0.7",
    ])
    return {"home": home, "majority": majority, "balanced": balanced,
            "stored_after_majority": stored_after_majority}


def test_a_majority_only_model_is_refused_by_default_saying_so_and_exits_5(
    imbalanced: dict[str, Any],
) -> None:
    result = imbalanced["majority"]
    assert result.exit_code == 5, result.output
    assert "accuracy             0.9700" in result.output  # above the 0.9 accuracy floor
    assert (
        "decision: gated: accuracy 0.9700 is no better than always predicting the majority "
        "class 0 (0.9700 on the holdout)"
    ) in result.output
    assert not imbalanced["stored_after_majority"]
    report = next(x for x in result.output.splitlines() if x.startswith("report: "))
    assert "decision: gated" in Path(report.removeprefix("report: ")).read_text()


def test_a_balanced_model_judged_on_balanced_accuracy_is_deployed(
    imbalanced: dict[str, Any],
) -> None:
    result = imbalanced["balanced"]
    assert result.exit_code == 0, result.output
    assert "decision: deploy: no champion in production; balanced_accuracy" in result.output
    metadata = json.loads((imbalanced["home"] / "store/fraud/1/metadata.json").read_text())
    assert metadata["params"]["hyperparameters"] == {"class_weight": "balanced"}
    # The model the old accuracy-only gate refused: it finds the positives at a cost in accuracy.
    assert metadata["metrics"]["balanced_accuracy"] > 0.7
    assert metadata["metrics"]["accuracy"] < 0.9


# The serving half: `mlops serve` (and KServe's sklearn runtime) against the same `predict`.


@dataclass
class ServedCase:
    """A trained case served by ``mlops serve``, and its stored model's own answers."""

    trained: Trained
    server: ServerProcess
    predicted: np.ndarray
    proba: np.ndarray

    def infer(self, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.server.url}/v2/models/{self.trained.name}/infer"
        return _output(httpx.post(url, json=body, timeout=30))


@pytest.fixture(scope="module")
def served_case(
    trained_case: Trained, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedCase]:
    """``mlops serve --workers 1`` on the case's deployed version, one server per case."""
    assert trained_case.exit_code == 0, trained_case.output
    predicted, proba = trained_case.own_predictions(
        trained_case.rows(), tmp_path_factory.mktemp("own-model")
    )
    server = start_server(trained_case.home, "--model-name", trained_case.name, "--workers", "1")
    try:
        yield ServedCase(trained_case, server, predicted, proba)
    finally:
        server.stop()


def _output(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    return dict(output)


def _tensor_request(rows: pd.DataFrame, probabilities: bool = False) -> dict[str, Any]:
    """One FP64 tensor in the model's column order, ``null`` for a missing value."""
    values = [[None if math.isnan(v) else v for v in row] for row in rows.to_numpy(float).tolist()]
    return v2_request(Rows(values), probabilities)


def _pandas_request(rows: pd.DataFrame, probabilities: bool = False) -> dict[str, Any]:
    """The pandas codec, as `mlops predict` sends a table: one tensor per column, by name."""
    return v2_request(frame_rows(rows), probabilities)


def _assert_labels(served: ServedCase, output: dict[str, Any]) -> None:
    assert output["data"] == served.predicted.tolist()
    assert output["datatype"] == served.trained.metadata["label_datatype"]
    assert output["shape"] == [len(served.predicted)]


def _assert_probabilities(served: ServedCase, output: dict[str, Any]) -> None:
    assert output["datatype"] == "FP64"
    assert output["shape"] == list(served.proba.shape)
    data = np.asarray(output["data"], dtype=float).reshape(served.proba.shape)
    np.testing.assert_allclose(data, served.proba, rtol=0, atol=1e-9)


def test_mlops_serve_answers_the_pandas_codec_as_the_stored_model_s_own_predict(
    served_case: ServedCase,
) -> None:
    rows = served_case.trained.rows()
    # The columns in reverse: the server matches them by name, as KServe's codec does.
    body = _pandas_request(rows[rows.columns[::-1]])
    assert body["parameters"] == {"content_type": "pd"}
    _assert_labels(served_case, served_case.infer(body))


def test_mlops_serve_answers_the_pandas_codec_s_probabilities_as_predict_proba(
    served_case: ServedCase,
) -> None:
    rows = served_case.trained.rows()
    _assert_probabilities(served_case, served_case.infer(_pandas_request(rows, True)))


def test_one_tensor_is_answered_as_predict_by_a_tensor_model_and_refused_by_a_dataframe_one(
    served_case: ServedCase,
) -> None:
    trained = served_case.trained
    if trained.metadata["input_kind"] != "tensor":
        # A dataframe model refuses the single tensor, saying what to send instead.
        url = f"{served_case.server.url}/v2/models/{trained.name}/infer"
        refused = httpx.post(url, json=_tensor_request(trained.rows().select_dtypes("number")))
        assert refused.status_code == 400, refused.text
        assert "content_type" in refused.json()["error"]
        return
    rows = trained.rows()
    _assert_labels(served_case, served_case.infer(_tensor_request(rows)))
    _assert_probabilities(served_case, served_case.infer(_tensor_request(rows, True)))


def test_kserve_s_sklearn_runtime_answers_the_stored_version_as_mlops_serve(
    served_case: ServedCase,
) -> None:
    trained = served_case.trained
    # The version directory the pipeline stored: what the storage initializer leaves in
    # /mnt/models. KServe builds the DataFrame in the request's column order and a tensor model
    # reads positions, so the columns go in the model's order.
    version_dir = Path(trained.storage_uri.removeprefix("file://"))
    body = _pandas_request(trained.rows())
    runtime = start_runtime(version_dir, trained.name, trained.home)
    try:
        answered = _output(httpx.post(runtime.infer_url(), json=body, timeout=30))
    finally:
        runtime.stop()
    local = served_case.infer(body)
    assert answered["data"] == local["data"] == served_case.predicted.tolist()
    assert answered["datatype"] == local["datatype"] == trained.metadata["label_datatype"]


@pytest.fixture(scope="module")
def rolled_out(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The mixed text-label forest run twice: version 2 a canary, `mlops rollout` under load."""
    name = "forest-rollout"
    table = tmp_path_factory.mktemp("tables") / f"{name}.parquet"
    text_three_classes_mixed().to_parquet(table)
    arguments = ["--source", str(table), "--label-column", "label", "--estimator", "random_forest",
                 "--model-name", name]  # fmt: skip
    first, run_dir = _run_in(home, arguments)
    assert first.exit_code == 0, first.output
    rows = pd.read_parquet(run_dir / "train" / "holdout").drop(columns=["label"])
    server = start_server(home, "--model-name", name, "--workers", "1")
    stop = threading.Event()
    statuses: list[int] = []

    # The whole table, 50 rows a request in turn: traffic like the training data, so the input
    # drift signal (PSI against the training rows) judges it in bounds.
    table_rows = pd.read_parquet(table).drop(columns=["label"])
    bodies = [_pandas_request(table_rows.iloc[i : i + 50]) for i in range(0, len(table_rows), 50)]

    def traffic() -> None:
        with httpx.Client(timeout=30) as http:
            for turn in range(10_000):
                if stop.is_set():
                    break
                url = f"{server.url}/v2/models/{name}/infer"
                statuses.append(http.post(url, json=bodies[turn % len(bodies)]).status_code)
                stop.wait(0.02)

    # Three clients and 6 s windows: enough mirrored requests (20) to judge the shadow agreement.
    clients = [threading.Thread(target=traffic) for _ in range(3)]
    try:
        second, _ = _run_in(home, arguments)
        for client in clients:
            client.start()
        rollout = mlops(
            home, "rollout", name, "--url", server.url, "--steps", "50,100", "--interval", "6",
            "--min-requests", "10", "--min-drift-rows", "50", "--max-holds", "5",
        )
        stop.set()
        for client in clients:
            client.join()
        answer = _output(httpx.post(f"{server.url}/v2/models/{name}/infer",
                                    json=_pandas_request(rows)))  # fmt: skip
        yield {"second": second, "rollout": rollout, "statuses": statuses, "answer": answer,
               "rows": rows, "version_2": home / "store" / name / "2"}  # fmt: skip
    finally:
        stop.set()
        for client in clients:
            if client.is_alive():
                client.join()
        server.stop()


def test_a_second_run_is_a_canary_that_mlops_rollout_promotes_under_load(
    rolled_out: dict[str, Any], tmp_path: Path
) -> None:
    second, rollout = rolled_out["second"], rolled_out["rollout"]
    assert second.exit_code == 0, second.output
    assert "model: forest-rollout version 2" in second.output
    assert rollout.returncode == 0, rollout.stdout + rollout.stderr
    assert "promot" in rollout.stdout
    assert rolled_out["statuses"] and set(rolled_out["statuses"]) == {200}
    # After the promote, version 2 answers, as its own predict does.
    answer = rolled_out["answer"]
    trained = Trained("forest-rollout", CASES["forest-text-3-classes-mixed"], Path(), "", 0,
                      f"file://{rolled_out['version_2']}/", {}, rolled_out["rows"], "label",
                      Path())  # fmt: skip
    predicted, _ = trained.own_predictions(rolled_out["rows"], tmp_path / "model")
    assert answer["data"] == predicted.tolist()
