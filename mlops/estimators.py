"""The estimators ``mlops run`` can train, and their hyperparameters' defaults.

The pipeline's first step and ``mlops run``'s pre-flight check read the defaults here instead of
asking scikit-learn: importing it takes more than a second, and the check needs only each
parameter's name and the type of its default. The table is scikit-learn 1.5.2's (the pinned
version, with ``FIXED_PARAMETERS`` applied); ``tests/unit/test_parameters.py`` fails when it stops
matching ``get_params()``.
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
    "svc": {
        "C": 1.0,
        "break_ties": False,
        "cache_size": 200,
        "class_weight": None,
        "coef0": 0.0,
        "decision_function_shape": "ovr",
        "degree": 3,
        "gamma": "scale",
        "kernel": "rbf",
        "max_iter": -1,
        "probability": True,  # FIXED_PARAMETERS: scikit-learn's own default is False
        "random_state": None,
        "shrinking": True,
        "tol": 0.001,
        "verbose": False,
    },
    "hist_gradient_boosting": {
        "categorical_features": "warn",
        "class_weight": None,
        "early_stopping": "auto",
        "interaction_cst": None,
        "l2_regularization": 0.0,
        "learning_rate": 0.1,
        "loss": "log_loss",
        "max_bins": 255,
        "max_depth": None,
        "max_features": 1.0,
        "max_iter": 100,
        "max_leaf_nodes": 31,
        "min_samples_leaf": 20,
        "monotonic_cst": None,
        "n_iter_no_change": 10,
        "random_state": None,
        "scoring": "loss",
        "tol": 1e-07,
        "validation_fraction": 0.1,
        "verbose": 0,
        "warm_start": False,
    },
}

# Set on every model of that estimator, whatever the hyperparameters say: the gate, batch
# scoring and the server all read class probabilities.
FIXED_PARAMETERS: dict[str, dict[str, Any]] = {"svc": {"probability": True}}

# What ``--hyperparameters`` is when not given (an empty object in the pipeline means these):
# each estimator's own, never another's (logistic regression's ``C`` is no forest parameter).
DEFAULT_HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "logistic_regression": {"C": 1.0, "max_iter": 1000},
    "random_forest": {"n_estimators": 100},
    "gradient_boosting": {"n_estimators": 100, "learning_rate": 0.1},
    "svc": {"C": 1.0, "kernel": "rbf"},
    "hist_gradient_boosting": {"max_iter": 100, "learning_rate": 0.1},
}


def effective_hyperparameters(estimator: str, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """The estimator's ``DEFAULT_HYPERPARAMETERS`` when ``hyperparameters`` is empty, else them.

    Given ones replace the defaults whole: ``{"max_depth": 3}`` for a forest means scikit-learn's
    default for everything else, as a user reading scikit-learn's documentation expects.
    """
    if hyperparameters:
        return dict(hyperparameters)
    return dict(DEFAULT_HYPERPARAMETERS.get(estimator, {}))
