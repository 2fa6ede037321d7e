"""Scoring step (KFP shell): put the predictions where the user asked (``mlops.scoring``)."""

from kfp import dsl
from kfp.dsl import Dataset, Input

from components._image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def write_predictions(predictions: Input[Dataset], output: str) -> str:
    """Copy the predictions to ``output``, a new local file or ``s3://`` object.

    Args:
        predictions: The scoring step's predictions.
        output: A path or ``s3://bucket/key`` that does not exist yet.

    Returns:
        Where the predictions are.
    """
    from pathlib import Path

    from mlops.scoring import publish_predictions

    where = publish_predictions(Path(predictions.path), output)
    print(f"wrote {predictions.metadata.get('rows')} predictions to {where}")
    return where
