"""Step 3 (KFP shell): fit the scikit-learn ``Pipeline``; the work is in ``mlops.training``."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components._image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def train(
    dataset: Input[Dataset],
    label_column: str,
    estimator: str,
    hyperparameters: dict,
    test_size: float,
    seed: int,
    label_noise: float,
    model: Output[Model],
    holdout: Output[Dataset],
) -> None:
    """Fit the classifier and hand the holdout rows to the evaluation step.

    Args:
        dataset: The validated table.
        label_column: The class label column.
        estimator: ``logistic_regression``, ``random_forest`` or ``gradient_boosting``.
        hyperparameters: Keyword arguments of the estimator.
        test_size: Holdout share, within (0, 1).
        seed: Seed of the split and the estimator.
        label_noise: Share of training labels replaced at random (0 for a real model).
        model: The fitted ``Pipeline``, saved with joblib.
        holdout: The holdout rows, never seen in training.
    """
    import joblib
    import pandas as pd
    import sklearn

    from mlops.training import fit_classifier, split_holdout

    frame = pd.read_parquet(dataset.path)
    train_rows, holdout_rows = split_holdout(frame, label_column, test_size, seed)
    fitted = fit_classifier(train_rows, label_column, estimator, hyperparameters, seed, label_noise)
    joblib.dump(fitted, model.path)
    holdout_rows.to_parquet(holdout.path, index=False)
    model.metadata.update(
        {
            "framework": "sklearn",
            "sklearn_version": sklearn.__version__,
            "feature_names": [c for c in frame.columns if c != label_column],
            "params": {
                "estimator": estimator,
                "hyperparameters": hyperparameters,
                "test_size": test_size,
                "seed": seed,
                "label_noise": label_noise,
            },
        }
    )
