"""Step 1 (KFP shell): load a table to train on or to score; the work is in ``mlops.data``."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components._image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def load_data(source: str, dataset: Output[Dataset]) -> None:
    """Load the table and write it as Parquet, a chunk at a time (any size, bounded memory).

    Args:
        source: ``sklearn:breast_cancer``, a path, or an ``s3://`` URI (CSV or Parquet).
        dataset: The loaded table (a built-in's ``class_names`` in its metadata).
    """
    from mlops.data import builtin_class_names, write_table

    rows, columns = write_table(source, dataset.path)
    dataset.metadata.update({"source": source, "rows": rows, "columns": columns})
    names = builtin_class_names(source)
    if names:  # a built-in dataset's target_names, for the model's metadata
        dataset.metadata["class_names"] = names
