"""The estimators ``mlops run`` can train, and their hyperparameters' defaults.

The pipeline's first step and ``mlops run``'s pre-flight check read the defaults here instead of
asking scikit-learn: importing it takes more than a second, and the check needs only each
parameter's name and the type of its default. The table is scikit-learn 1.5.2's (the pinned
version); ``tests/unit/test_parameters.py`` fails when it stops matching ``get_params()``.
"""

from typing import Any

ESTIMATOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "logistic_regression": {
        "C": 1.0,
        "class_weight": None,
        "dual": False,
        "fit_intercept": True,
        "intercept_scaling": 1,
        "l1_ratio": None,
        "max_iter": 100,
        "multi_class": "deprecated",
        "n_jobs": None,
        "penalty": "l2",
        "random_state": None,
        "solver": "lbfgs",
        "tol": 0.0001,
        "verbose": 0,
        "warm_start": False,
    },
    "random_forest": {
        "bootstrap": True,
        "ccp_alpha": 0.0,
        "class_weight": None,
        "criterion": "gini",
        "max_depth": None,
        "max_features": "sqrt",
        "max_leaf_nodes": None,
        "max_samples": None,
        "min_impurity_decrease": 0.0,
        "min_samples_leaf": 1,
        "min_samples_split": 2,
        "min_weight_fraction_leaf": 0.0,
        "monotonic_cst": None,
        "n_estimators": 100,
        "n_jobs": None,
        "oob_score": False,
        "random_state": None,
        "verbose": 0,
        "warm_start": False,
    },
    "gradient_boosting": {
        "ccp_alpha": 0.0,
        "criterion": "friedman_mse",
        "init": None,
        "learning_rate": 0.1,
        "loss": "log_loss",
        "max_depth": 3,
        "max_features": None,
        "max_leaf_nodes": None,
        "min_impurity_decrease": 0.0,
        "min_samples_leaf": 1,
        "min_samples_split": 2,
        "min_weight_fraction_leaf": 0.0,
        "n_estimators": 100,
        "n_iter_no_change": None,
        "random_state": None,
        "subsample": 1.0,
        "tol": 0.0001,
        "validation_fraction": 0.1,
        "verbose": 0,
        "warm_start": False,
    },
}
