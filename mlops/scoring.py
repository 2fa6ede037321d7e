"""Batch scoring: stream a table through a stored model version, write predictions atomically.

The table (the Parquet file the load step writes) is read a chunk at a time; each chunk is
checked (the model's feature columns are there; numeric ones numbers, finite, and present
unless the model imputes them) before it is scored, and the
predictions go to a temporary file beside the output that is linked into place only when every
row has been scored. A bad row anywhere stops the run with one error naming the column and the
row, and nothing is written; an existing output is never replaced.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from mlops.data import s3_bucket

OUTPUT_SUFFIXES = (".csv", ".parquet")
CHUNK_ROWS = 100_000
ROW_COLUMN = "row"
CLASS_COLUMN = "predicted_class"
VERSION_COLUMN = "model_version"


class ScoringError(ValueError):
    """The input cannot be scored; the message names the column and row, and what is allowed."""


def output_format(output: str) -> str:
    """The format of ``output``, from its suffix: ``csv`` or ``parquet``.

    Raises:
        ValueError: When the suffix is neither ``.csv`` nor ``.parquet``.
    """
    suffix = Path(urlparse(output).path if output.startswith("s3://") else output).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise ValueError(
            f"output {output!r} must end in .csv or .parquet (the format of the predictions), "
            f"got {suffix or 'no suffix'!r}"
        )
    return suffix.removeprefix(".")


def check_output(output: str) -> None:
    """Refuse an output that cannot be written, before any row is scored.

    Raises:
        ValueError: When the suffix is unsupported.
        FileExistsError: When the output exists (predictions are never overwritten).
        FileNotFoundError: When a local output's directory does not exist.
        StoreError: When an S3 bucket cannot be reached.
    """
    output_format(output)
    if output.startswith("s3://"):
        bucket, key = _split_s3(output)
        if s3_bucket(bucket).object_exists(key):
            raise FileExistsError(_exists(output))
        return
    path = Path(output.removeprefix("file://"))
    if path.exists():
        raise FileExistsError(_exists(output))
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"output directory {str(path.parent)!r} does not exist: create it first"
        )


def _exists(output: str) -> str:
    return f"output {output!r} exists: predictions are never overwritten; choose another name"


def model_storage_uri(model_name: str, version: int, store_uri: str, tracking_uri: str) -> str:
    """The storage URI of the version to score with: ``version``, or the champion when it is 0.

    Raises:
        LookupError: When ``version`` is 0 and no version holds the ``champion`` alias.
        StoreError: When the store cannot be opened.
    """
    if version:
        from mlops.store import open_store

        return open_store(store_uri).version_uri(model_name, version)
    from mlops import registry

    # A local MLflow database that is not there has no champion: asking MLflow would create one.
    local_db = tracking_uri.startswith("sqlite:///")
    if local_db and not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        found = None
    else:
        found = registry.version_of_alias(tracking_uri, model_name, registry.CHAMPION)
    if not found or not found[1]:
        raise LookupError(
            f"model {model_name!r} has no champion in MLflow at {tracking_uri}: "
            "deploy one first (`mlops run`), or choose a version (--version)"
        )
    return found[1]


def load_model(storage_uri: str, dest: Path) -> tuple[Any, dict[str, Any], int]:
    """Fetch a version (signature and sha256 checked by the store) and unpickle it.

    Returns:
        The model, its metadata and its version number.

    Raises:
        StoreError: When the version is missing, damaged or fails its checks.
        ScoringError: When the version lists no feature names or cannot give probabilities.
    """
    import joblib

    from mlops.store import fetch_version, split_version_uri

    model_path, metadata = fetch_version(storage_uri, dest)
    model = joblib.load(model_path)
    if not metadata.get("feature_names"):
        raise ScoringError(f"{storage_uri} lists no feature_names in metadata.json: publish again")
    if not hasattr(model, "predict_proba"):
        raise ScoringError(f"the model at {storage_uri} gives no class probabilities")
    return model, metadata, split_version_uri(storage_uri)[2]


def score_table(
    table: Path,
    model: Any,
    feature_names: list[str],
    model_version: int,
    output: Path,
    *,
    id_column: str = "",
    chunk_rows: int = CHUNK_ROWS,
    fmt: str = "",
    feature_types: dict[str, str] | None = None,
) -> int:
    """Score every row of a Parquet ``table`` and write the predictions to ``output``.

    Each output row holds the input's ``id_column`` (else ``row``, its 0-based position), the
    predicted class, one ``probability_<class>`` column per class and the model version. The
    format follows ``output``'s suffix. Rows are read, checked, scored and written
    ``chunk_rows`` at a time into a temporary file beside ``output``, linked into place at the
    end: a failure leaves no file, and an existing ``output`` is never replaced.

    Args:
        table: The rows to score (Parquet; other columns are ignored).
        model: A fitted classifier with ``predict_proba`` and ``classes_``.
        feature_names: The model's features, in training order.
        model_version: Written beside every prediction.
        output: A ``.csv`` or ``.parquet`` file that does not exist yet.
        id_column: A column of ``table`` that identifies each row, copied to the output.
        chunk_rows: Rows held in memory at a time.
        fmt: ``csv`` or ``parquet``; by default ``output``'s suffix decides.
        feature_types: The version's ``feature_types`` (``None``: every feature numeric); a
            text feature makes the model's input a DataFrame (``mlops.training.model_input``).

    Returns:
        The number of rows scored.

    Raises:
        ScoringError: When a feature column is missing, a numeric one holds text or an
            infinite value, or a missing value that the model cannot impute (one error: the
            first such row).
        FileExistsError: When ``output`` exists.
    """
    import pyarrow.parquet as pq

    from mlops.training import accepts_missing

    fmt = fmt or output_format(str(output))
    types = {name: (feature_types or {}).get(name, "numeric") for name in feature_names}
    allow_missing = accepts_missing(model)
    # pre_buffer=False: pyarrow otherwise keeps every row group it read buffered until the file
    # is closed, and a 1,000,000-row table would end up in memory whole. One decoding thread:
    # each thread holds a column chunk, and the model, not decoding, is the slow part.
    source = pq.ParquetFile(table, pre_buffer=False)
    _check_columns(source.schema_arrow.names, feature_names, id_column)
    columns = list(dict.fromkeys([*feature_names, *([id_column] if id_column else [])]))
    classes = np.asarray(model.classes_)
    rows = 0
    with _staged(output) as staged, _writer(fmt, staged) as write:
        for batch in source.iter_batches(batch_size=chunk_rows, columns=columns, use_threads=False):
            features = model_rows(batch, types, first_row=rows, allow_missing=allow_missing)
            probabilities = model.predict_proba(features)
            write(_predictions(batch, rows, id_column, classes, probabilities, model_version))
            rows += batch.num_rows
        if not rows:  # a header and no rows: the output has the header too
            empty = source.schema_arrow.empty_table().select(columns)
            no_rows = np.empty((0, len(classes)))
            write(_predictions(empty, 0, id_column, classes, no_rows, model_version))
    return rows


def _check_columns(present: list[str], feature_names: list[str], id_column: str) -> None:
    missing = [name for name in feature_names if name not in present]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ScoringError(
            f"column {missing[0]!r}{more} is missing from the input (header row): the model "
            f"needs the columns {', '.join(repr(n) for n in feature_names)}"
        )
    if id_column and id_column not in present:
        raise ScoringError(f"id column {id_column!r} is not in the input (header row)")


def model_rows(
    batch: Any, types: dict[str, str], first_row: int = 0, allow_missing: bool = False
) -> Any:
    """The model's input for one chunk: a float matrix, or a DataFrame when a feature is text.

    Args:
        batch: A ``pyarrow.RecordBatch`` of input rows.
        types: ``{name: "numeric" | "categorical"}`` of the model's features, in order.
        first_row: How many input rows came before this chunk (for the row in messages).
        allow_missing: Whether the model imputes missing values (NaN may be sent).

    Raises:
        ScoringError: As ``feature_matrix`` for the numeric features.
    """
    numeric = [name for name, kind in types.items() if kind == "numeric"]
    matrix = feature_matrix(batch, numeric, first_row, allow_missing)
    if len(numeric) == len(types):
        return matrix
    import pandas as pd

    columns: dict[str, Any] = {name: matrix[:, i] for i, name in enumerate(numeric)}
    for name in types:
        if name not in columns:
            text = batch.column(name).to_pandas()
            columns[name] = text.map(lambda v: np.nan if pd.isna(v) else str(v)).astype(object)
    return pd.DataFrame(columns)[list(types)]


def feature_matrix(
    batch: Any, feature_names: list[str], first_row: int = 0, allow_missing: bool = False
) -> np.ndarray:
    """The model's input for one chunk: its feature columns as a float matrix, checked.

    Args:
        batch: A ``pyarrow.RecordBatch`` of input rows.
        feature_names: The columns to take, in order.
        first_row: How many input rows came before this chunk (for the row in messages).
        allow_missing: Whether a missing value (NaN, empty) is allowed (the model imputes it).

    Raises:
        ScoringError: For the first row (1 = the first data row of the input) whose feature
            is not a number, infinite, or missing when ``allow_missing`` is false; it names the
            column.
    """
    matrix = np.empty((batch.num_rows, len(feature_names)), dtype=np.float64)
    problems: list[tuple[int, str]] = []
    for index, name in enumerate(feature_names):
        values, problem = _column_values(batch.column(name), name)
        if problem is not None:
            problems.append(problem)
            continue
        wrong = np.isinf(values) if allow_missing else ~np.isfinite(values)
        bad = np.flatnonzero(wrong)
        if bad.size:
            kind = "is missing (NaN or empty)" if np.isnan(values[bad[0]]) else "is infinite"
            problems.append((int(bad[0]), f"column {name!r}, row {{row}}: the value {kind}"))
        matrix[:, index] = values
    if problems:
        position, message = min(problems, key=lambda problem: problem[0])
        need = (
            "every numeric feature needs a number or an empty cell"
            if allow_missing
            else "every feature needs a finite number"
        )
        raise ScoringError(
            message.format(row=first_row + position + 1)
            + f"; {need} (rows count from 1 after the header)"
        )
    return matrix


def _column_values(column: Any, name: str) -> tuple[np.ndarray, tuple[int, str] | None]:
    """A column as floats, or the first row that is not a number and why."""
    import pandas as pd
    import pyarrow as pa

    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return column.to_numpy(zero_copy_only=False).astype(np.float64, copy=False), None
    if pa.types.is_null(kind):
        return np.full(len(column), np.nan), None
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        # A CSV column with one word in it is text throughout: find the word, name its row.
        text = column.to_pandas()
        numbers = pd.to_numeric(text, errors="coerce")
        words = np.flatnonzero(numbers.isna().to_numpy() & text.notna().to_numpy())
        if words.size:
            value = str(text.iloc[words[0]])
            shown = value if len(value) <= 20 else value[:17] + "..."
            return numbers.to_numpy(), (
                int(words[0]),
                f"column {name!r}, row {{row}}: {shown!r} is not a number",
            )
        return numbers.to_numpy(dtype=np.float64), None
    return np.empty(0), (0, f"column {name!r}, row {{row}}: holds {kind} values, not numbers")


def _predictions(
    batch: Any,
    first_row: int,
    id_column: str,
    classes: np.ndarray,
    probabilities: np.ndarray,
    model_version: int,
) -> Any:
    import pyarrow as pa

    if id_column:
        ids = batch.column(id_column)
    else:
        ids = pa.array(np.arange(first_row, first_row + batch.num_rows), pa.int64())
    columns = {
        id_column or ROW_COLUMN: ids,
        CLASS_COLUMN: pa.array(classes[probabilities.argmax(axis=1)]),
        **{f"probability_{c}": pa.array(probabilities[:, i]) for i, c in enumerate(classes)},
        VERSION_COLUMN: pa.array(np.full(batch.num_rows, model_version, dtype=np.int64)),
    }
    return pa.table(columns)


@contextlib.contextmanager
def _staged(output: Path) -> Iterator[Path]:
    """A temporary file beside ``output``, linked to ``output`` only if the block succeeds.

    A link never replaces a file, so a concurrent writer or an existing output fails the
    link instead of being overwritten; the temporary file goes either way.
    """
    staged = output.parent / f".{output.name}.{uuid.uuid4().hex}.tmp"
    if output.exists():
        raise FileExistsError(_exists(str(output)))
    try:
        yield staged
        try:
            os.link(staged, output)
        except FileExistsError as err:
            raise FileExistsError(_exists(str(output))) from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()


@contextlib.contextmanager
def _writer(fmt: str, path: Path) -> Iterator[Any]:
    """A function that appends a table to ``path`` (CSV or Parquet); the schema is the first's."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    opened: list[Any] = []

    def write(table: Any) -> None:
        if not opened:
            kind = pq.ParquetWriter if fmt == "parquet" else pcsv.CSVWriter
            opened.append(kind(str(path), table.schema))
        opened[0].write_table(table)

    try:
        yield write
    finally:
        for writer in opened:
            writer.close()


def publish_predictions(local_file: Path, output: str) -> str:
    """Copy the predictions to ``output``: a new local file, or a new ``s3://`` object.

    Returns:
        Where they are.

    Raises:
        FileExistsError: When ``output`` exists (nothing is overwritten).
        StoreError: When the S3 object cannot be written.
    """
    import shutil

    if output.startswith("s3://"):
        bucket, key = _split_s3(output)
        s3_bucket(bucket).create_object_from_file(key, local_file)
        return output
    path = Path(output.removeprefix("file://"))
    with _staged(path) as staged, open(local_file, "rb") as source, open(staged, "wb") as dest:
        shutil.copyfileobj(source, dest, 1 << 20)
    return str(path)


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    key = parsed.path.lstrip("/")
    if not parsed.netloc or not key:
        raise ValueError(f"output {uri!r} must name a bucket and a key: s3://<bucket>/<key>")
    return parsed.netloc, key
