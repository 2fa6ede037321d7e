"""Step 2 (KFP shell): check the table, record reference statistics (``mlops.validation``)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components._image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def validate_data(
    dataset: Input[Dataset],
    label_column: str,
    min_rows: int,
    expected_columns: list,
    reference: Output[Artifact],
) -> str:
    """Stop the run on bad data; otherwise return the data fingerprint.

    Args:
        dataset: The loaded table.
        label_column: The class label column.
        min_rows: The fewest rows accepted.
        expected_columns: Feature columns that must be present (empty: any numeric columns).
        reference: Per-feature reference statistics (JSON), used for drift.

    Returns:
        The data fingerprint (sha256 of the table).
    """
    import json

    import pandas as pd

    from mlops.validation import data_fingerprint, reference_statistics, validate_table

    frame = pd.read_parquet(dataset.path)
    validate_table(frame, label_column, min_rows, expected_columns or None)
    with open(reference.path, "w") as handle:
        json.dump(reference_statistics(frame, label_column), handle)
    return data_fingerprint(frame)
