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
        _s3_bucket(parsed.netloc).stat_object(parsed.path.lstrip("/"))
    else:
        _check_path(Path(source.removeprefix("file://")))


def _check_builtin(name: str) -> None:
    if name not in _BUILTINS:
        raise ValueError(
            f"source 'sklearn:{name}' is not a built-in dataset: use one of "
            + ", ".join(f"sklearn:{b}" for b in _BUILTINS)
        )


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


def _s3_bucket(bucket: str) -> S3Store:
    from mlops.s3_store import S3Store
    from mlops.settings import S3Settings

    return S3Store(bucket, "", S3Settings.from_env())


def _load_s3(uri: str) -> pd.DataFrame:
    parsed = urlparse(uri)
    key = parsed.path.lstrip("/")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(key).name
        _s3_bucket(parsed.netloc).download_object(key, local)
        return _read_file(local)
