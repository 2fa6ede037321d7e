"""Load a table from a built-in dataset, a local file or an ``s3://`` URI."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

if TYPE_CHECKING:
    import pandas as pd

    from mlops.s3_store import S3Store

BUILTIN_PREFIX = "sklearn:"
# Rows per chunk when a file is copied to Parquet: a few tens of MB of floats, so a file of
# any size is converted within a bounded amount of memory.
CHUNK_ROWS = 100_000
_BUILTINS = ("breast_cancer", "iris", "wine")
LABEL_COLUMN = "target"


def load_table(source: str) -> pd.DataFrame:
    """Load ``source`` into a DataFrame.

    Args:
        source: ``sklearn:<name>`` (``breast_cancer``, ``iris``, ``wine``; label column
            ``target``), a path or ``file://`` URI, or ``s3://bucket/key``; ``.csv`` or
            ``.parquet``.

    Returns:
        The table, label column included.

    Raises:
        ValueError: When the source names an unknown dataset or an unsupported format.
        FileNotFoundError: When a local file does not exist.
    """
    if source.startswith(BUILTIN_PREFIX):
        return _load_builtin(source.removeprefix(BUILTIN_PREFIX))
    if source.startswith("s3://"):
        return _load_s3(source)
    return _read_file(Path(source.removeprefix("file://")))


def check_source(source: str) -> None:
    """Check that ``source`` names something loadable, without loading it.

    Raises:
        ValueError: When the source names an unknown dataset or an unsupported format.
        FileNotFoundError: When a local file does not exist.
        StoreError: When an ``s3://`` object cannot be reached or does not exist.
    """
    if source.startswith(BUILTIN_PREFIX):
        _check_builtin(source.removeprefix(BUILTIN_PREFIX))
    elif source.startswith("s3://"):
        _check_format(Path(source))
        parsed = urlparse(source)
        s3_bucket(parsed.netloc).stat_object(parsed.path.lstrip("/"))
    else:
        _check_path(Path(source.removeprefix("file://")))


def _check_builtin(name: str) -> None:
    if name not in _BUILTINS:
        raise ValueError(
            f"source 'sklearn:{name}' is not a built-in dataset: use one of "
            + ", ".join(f"sklearn:{b}" for b in _BUILTINS)
        )


def builtin_class_names(source: str) -> dict[str, str]:
    """``{str(class): name}`` of a built-in dataset (its ``target_names``); ``{}`` otherwise.

    A built-in's label is a number per class; the names travel with the model (metadata
    ``class_names``) so that people read "malignant", not 0.
    """
    if not source.startswith(BUILTIN_PREFIX):
        return {}
    from sklearn import datasets

    name = source.removeprefix(BUILTIN_PREFIX)
    _check_builtin(name)
    names = getattr(datasets, f"load_{name}")().target_names
    return {str(index): str(value) for index, value in enumerate(names)}


def _check_format(path: Path) -> None:
    if path.suffix.lower() not in (".csv", ".parquet"):
        raise ValueError(f"source {str(path)!r} must end in .csv or .parquet, got {path.suffix!r}")


def _check_path(path: Path) -> None:
    _check_format(path)
    if not path.exists():
        raise FileNotFoundError(f"source {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"source {str(path)!r} is empty: it needs a header row and data rows")


def _load_builtin(name: str) -> pd.DataFrame:
    from sklearn import datasets

    _check_builtin(name)
    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    return bunch.frame.rename(columns={"target": LABEL_COLUMN})


def _read_file(path: Path) -> pd.DataFrame:
    import pandas as pd  # here: ``mlops run``'s pre-flight check of the source needs no pandas

    _check_path(path)
    return pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)


def s3_bucket(bucket: str) -> S3Store:
    """The S3 bucket ``bucket`` as a store without a prefix, with ``S3Settings.from_env()``."""
    from mlops.s3_store import S3Store
    from mlops.settings import S3Settings

    return S3Store(bucket, "", S3Settings.from_env())


def write_table(source: str, dest: str | Path, chunk_rows: int = CHUNK_ROWS) -> tuple[int, int]:
    """Copy ``source`` to a Parquet file at ``dest``, a chunk at a time; return (rows, columns).

    The table written is the one ``load_table`` returns (the same columns and types, the
    index dropped), but a CSV or Parquet file is never held in memory whole: a 1,000,000-row
    file costs as much memory as ``chunk_rows`` of it.

    Args:
        source: As for ``load_table``.
        dest: The Parquet file to write.
        chunk_rows: Rows read and written at a time.

    Raises:
        ValueError: When the source names an unknown dataset or an unsupported format.
        FileNotFoundError: When a local file does not exist.
        StoreError: When an ``s3://`` object cannot be read.
    """
    if source.startswith(BUILTIN_PREFIX):
        frame = _load_builtin(source.removeprefix(BUILTIN_PREFIX))
        frame.to_parquet(dest, index=False)
        return len(frame), len(frame.columns)
    if source.startswith("s3://"):
        parsed = urlparse(source)
        key = parsed.path.lstrip("/")
        _check_format(Path(key))
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(key).name
            s3_bucket(parsed.netloc).download_object(key, local)
            return _copy_file(local, Path(dest), chunk_rows)
    return _copy_file(Path(source.removeprefix("file://")), Path(dest), chunk_rows)


def _copy_file(path: Path, dest: Path, chunk_rows: int) -> tuple[int, int]:
    _check_path(path)
    if path.suffix.lower() == ".csv":
        return _copy_csv(path, dest, chunk_rows)
    return _copy_parquet(path, dest, chunk_rows)


def _copy_parquet(path: Path, dest: Path, chunk_rows: int) -> tuple[int, int]:
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    source = pq.ParquetFile(path, pre_buffer=False)  # see mlops.scoring.score_table
    names = source.schema_arrow.names
    # A pandas index (stored as columns, or as a range in the metadata) is dropped, as
    # ``to_parquet(index=False)`` drops it; a file without one is already that table.
    index = (source.schema_arrow.pandas_metadata or {}).get("index_columns", [])
    if not index:
        shutil.copyfile(path, dest)
        return source.metadata.num_rows, len(names)
    columns = [name for name in names if name not in index]
    schema = pa.schema([source.schema_arrow.field(name) for name in columns])
    with pq.ParquetWriter(dest, schema) as writer:
        batches = source.iter_batches(batch_size=chunk_rows, columns=columns, use_threads=False)
        for batch in batches:
            writer.write_batch(batch)
    return source.metadata.num_rows, len(columns)


def _copy_csv(path: Path, dest: Path, chunk_rows: int) -> tuple[int, int]:
    """Convert a CSV chunk by chunk with pandas' own type inference.

    pandas infers each chunk's types alone; when they agree (the usual case) the chunks are
    the file's table. When they do not (integers in one chunk, a decimal further down), the
    file is read again with the types pandas gives the whole file, so the table is the same.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    types: dict[str, list[str]] = {}
    rows, consistent, writer = 0, True, None
    try:
        for chunk in pd.read_csv(path, chunksize=chunk_rows):
            for name, dtype in chunk.dtypes.items():
                types.setdefault(str(name), []).append(str(dtype))
            rows += len(chunk)
            if not consistent:
                continue
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(dest, table.schema)
            if table.schema.equals(writer.schema, check_metadata=False):
                writer.write_table(table)
            else:
                consistent = False
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # a header and no rows
        frame = pd.read_csv(path)
        frame.to_parquet(dest, index=False)
        return 0, len(frame.columns)
    if not consistent:
        dtypes = {name: _whole_file_dtype(seen) for name, seen in types.items()}
        schema = pa.schema([(name, _ARROW_TYPES[dtype]) for name, dtype in dtypes.items()])
        with pq.ParquetWriter(dest, schema) as rewriter:
            for chunk in pd.read_csv(path, chunksize=chunk_rows, dtype=dtypes):
                rewriter.write_table(
                    pa.Table.from_pandas(chunk, schema=schema, preserve_index=False)
                )
    return rows, len(types)


# The Arrow type of each pandas type ``_whole_file_dtype`` can give (text stays text).
_ARROW_TYPES = {"int64": "int64", "float64": "float64", "bool": "bool", "object": "string"}


def _whole_file_dtype(seen: list[str]) -> str:
    """The type pandas gives a column read whole, from the types it gave each chunk."""
    kinds = set(seen)
    if len(kinds) == 1:
        return seen[0]
    if kinds <= {"int64", "float64"}:
        return "float64"
    return "object"  # text, or a mix pandas keeps as objects


def _load_s3(uri: str) -> pd.DataFrame:
    parsed = urlparse(uri)
    key = parsed.path.lstrip("/")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(key).name
        s3_bucket(parsed.netloc).download_object(key, local)
        return _read_file(local)
