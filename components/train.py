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
        estimator: One of ``mlops.training.ESTIMATORS`` (``logistic_regression``,
            ``random_forest``, ``gradient_boosting``, ``svc``, ``hist_gradient_boosting``).
        hyperparameters: Keyword arguments of the estimator (empty: its defaults,
            ``mlops.estimators.DEFAULT_HYPERPARAMETERS``).
        test_size: Holdout share, within (0, 1).
        seed: Seed of the split and the estimator.
        label_noise: Share of training labels replaced at random (0 for a real model).
        model: The fitted ``Pipeline``, saved with joblib; its metadata's ``schema`` holds the
            input schema and the classes (``mlops.publishing.model_schema``, as JSON text).
        holdout: The holdout rows, never seen in training.
    """
    import json

    import joblib
    import pandas as pd
    import sklearn

    from mlops.data import LABEL_COLUMN
    from mlops.estimators import effective_hyperparameters
    from mlops.publishing import model_schema
    from mlops.training import feature_types, fit_classifier, normalize_labels, split_holdout

    frame = pd.read_parquet(dataset.path)
    frame[label_column] = normalize_labels(frame[label_column])
    train_rows, holdout_rows = split_holdout(frame, label_column, test_size, seed)
    fitted = fit_classifier(train_rows, label_column, estimator, hyperparameters, seed, label_noise)
    joblib.dump(fitted, model.path)
    holdout_rows.to_parquet(holdout.path, index=False)
    # A built-in dataset's class names (load_data records them) name its own label only.
    names = dataset.metadata.get("class_names") or {} if label_column == LABEL_COLUMN else {}
    types = feature_types(frame, label_column)
    model.metadata.update(
        {
            "framework": "sklearn",
            "sklearn_version": sklearn.__version__,
            "feature_names": list(types),
            # As JSON text: an artifact's metadata is a protobuf Struct, where the integer
            # classes would come back as doubles and the feature types in sorted order.
            "schema": json.dumps(model_schema(fitted, types, names)),
            "params": {
                "estimator": estimator,
                "hyperparameters": effective_hyperparameters(estimator, hyperparameters),
                "test_size": test_size,
                "seed": seed,
                "label_noise": label_noise,
            },
        }
    )
