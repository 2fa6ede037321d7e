"""Scoring step (KFP shell): predictions of a stored version for every row (``mlops.scoring``)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components._image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def score(
    dataset: Input[Dataset],
    model_name: str,
    version: int,
    store_uri: str,
    tracking_uri: str,
    output: str,
    id_column: str,
    chunk_rows: int,
    predictions: Output[Dataset],
) -> NamedTuple("Outputs", rows=int, model_version=int):  # type: ignore[valid-type]  # noqa: UP014
    """Score the rows with the champion or a chosen version, a chunk at a time.

    Args:
        dataset: The rows (Parquet, from ``load_data``).
        model_name: The model in the store and the registry.
        version: The store version; 0 scores with the version holding the ``champion`` alias.
        store_uri: A local directory or ``s3://bucket``.
        tracking_uri: MLflow tracking URI (to find the champion).
        output: Where the predictions go in the end; its suffix picks CSV or Parquet.
        id_column: An input column copied beside each prediction ('' for the row number).
        chunk_rows: Rows held in memory at a time.
        predictions: The predictions, in the output's format.

    Returns:
        The number of rows scored and the version that scored them.
    """
    import tempfile
    from collections import namedtuple
    from pathlib import Path

    from mlops.scoring import load_model, model_storage_uri, output_format, score_table

    storage_uri = model_storage_uri(model_name, version, store_uri, tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        model, metadata, model_version = load_model(storage_uri, Path(tmp))
    rows = score_table(
        Path(dataset.path),
        model,
        list(metadata["feature_names"]),
        model_version,
        Path(predictions.path),
        id_column=id_column,
        chunk_rows=chunk_rows,
        fmt=output_format(output),
        feature_types=metadata.get("feature_types"),
    )
    predictions.metadata.update({"rows": rows, "model_version": model_version})
    print(f"scored {rows} rows with {model_name} version {model_version} ({storage_uri})")
    Outputs = namedtuple("Outputs", ["rows", "model_version"])  # noqa: N806 (KFP's idiom)
    return Outputs(rows, model_version)
