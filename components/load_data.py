"""Step 1 (KFP shell): load the training table; the work is in ``mlops.data``."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components._image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def load_data(source: str, dataset: Output[Dataset]) -> None:
    """Load the training table and write it as Parquet.

    Args:
        source: ``sklearn:breast_cancer``, a path, or an ``s3://`` URI (CSV or Parquet).
        dataset: The loaded table.
    """
    from mlops.data import load_table

    frame = load_table(source)
    frame.to_parquet(dataset.path, index=False)
    dataset.metadata.update({"source": source, "rows": len(frame), "columns": len(frame.columns)})
