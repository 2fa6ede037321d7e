"""Load a table from a built-in dataset, a local file or an ``s3://`` URI."""

from __future__ import annotations

import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

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


def _load_builtin(name: str) -> pd.DataFrame:
    from sklearn import datasets

    if name not in _BUILTINS:
        raise ValueError(
            f"source 'sklearn:{name}' is not a built-in dataset: use one of "
            + ", ".join(f"sklearn:{b}" for b in _BUILTINS)
        )
    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    return bunch.frame.rename(columns={"target": LABEL_COLUMN})


def _read_file(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"source {str(path)!r} must end in .csv or .parquet, got {suffix!r}")
    if not path.exists():
        raise FileNotFoundError(f"source {str(path)!r} does not exist")
    return pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)


def _load_s3(uri: str) -> pd.DataFrame:
    from mlops.settings import S3Settings
    from mlops.store import S3Store

    parsed = urlparse(uri)
    key = parsed.path.lstrip("/")
    store = S3Store(parsed.netloc, "", S3Settings.from_env())
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(key).name
        store.download_object(key, local)
        return _read_file(local)
