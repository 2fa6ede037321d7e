"""Every pipeline parameter is checked before anything is written (issue 8 item 12)."""

import pytest

from mlops.parameters import MAX_MODEL_NAME_LENGTH, ParameterError, check_parameters

VALID = {
    "model_name": "breast-cancer",
    "canary_traffic_percent": 10,
    "test_size": 0.2,
    "gate_metric": "accuracy",
    "min_score": 0.9,
    "max_degradation": 0.02,
    "label_noise": 0.0,
    "min_rows": 100,
    "seed": 42,
    "estimator": "logistic_regression",
    "hyperparameters": {"C": 1.0, "max_iter": 1000},
    "namespace": "kubeflow-user",
    "service_account": "kserve-minio-sa",
    "deploy_target": "kubernetes",
}


def test_the_defaults_pass() -> None:
    check_parameters(VALID)
    # KFP carries every number of a dict parameter as a double: 1000.0 is an integer.
    check_parameters({**VALID, "hyperparameters": {"max_iter": 1000.0}, "min_rows": 5.0})
    check_parameters({**VALID, "service_account": ""})  # empty: the namespace's default


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("model_name", "../../x-escape", "starting with a letter"),
        ("model_name", "Breast-Cancer", "lower case"),
        ("model_name", "1model", "starting with a letter"),
        ("model_name", "model-", "ending with a letter or digit"),
        ("model_name", "a/b", "lower case"),
        ("model_name", "m" * (MAX_MODEL_NAME_LENGTH + 1), f"at most {MAX_MODEL_NAME_LENGTH}"),
        ("canary_traffic_percent", 101, "within 0..100"),
        ("canary_traffic_percent", -1, "within 0..100"),
        ("canary_traffic_percent", 5.5, "an integer"),
        ("test_size", 0, "within (0, 1)"),
        ("test_size", 1.0, "within (0, 1)"),
        ("test_size", float("nan"), "a number"),
        ("min_score", 1.5, "within [0, 1]"),
        ("min_accuracy", 1.5, "within [0, 1]"),  # its old name, still taken
        ("gate_metric", "precision", "one of ['accuracy', 'balanced_accuracy', 'f1_macro'"),
        ("max_degradation", -0.1, "within [0, 1]"),
        ("label_noise", 1.0, "within [0, 1)"),
        ("min_rows", 0, ">= 1"),
        ("seed", "x", "an integer"),
        ("estimator", "svm", "one of ['gradient_boosting'"),
        ("namespace", "Kube_flow", "a DNS label"),
        ("service_account", "bad_sa", "a DNS subdomain"),
        ("deploy_target", "cloud", "one of ['local', 'kubernetes']"),
    ],
)
def test_one_bad_parameter_is_one_error_naming_it(name: str, value: object, expected: str) -> None:
    with pytest.raises(ParameterError) as caught:
        check_parameters({**VALID, name: value})
    message = str(caught.value)
    assert message.startswith(f"parameter {name}=")
    assert expected in message


@pytest.mark.parametrize(
    ("hyperparameters", "expected"),
    [
        ({"gamma": 1}, "parameter hyperparameters.gamma=1 is invalid: expected a parameter of"),
        ({"C": "big"}, "parameter hyperparameters.C='big' is invalid"),
        ({"max_iter": float("inf")}, "hyperparameters.max_iter"),
        ({"fit_intercept": 1}, "hyperparameters.fit_intercept"),
    ],
)
def test_hyperparameters_must_belong_to_the_estimator_with_sane_types(
    hyperparameters: dict, expected: str
) -> None:
    with pytest.raises(ParameterError, match=expected.replace("(", r"\(").replace(".", r"\.")):
        check_parameters({**VALID, "hyperparameters": hyperparameters})


def test_a_string_or_number_hyperparameter_takes_either() -> None:
    params = {**VALID, "estimator": "random_forest"}
    check_parameters({**params, "hyperparameters": {"max_features": "sqrt", "n_estimators": 50}})
    check_parameters({**params, "hyperparameters": {"max_features": 0.5}})


def test_the_estimator_table_is_the_pinned_scikit_learns() -> None:
    """The check reads ``ESTIMATOR_DEFAULTS`` (no scikit-learn import); it must not drift."""
    from mlops.estimators import DEFAULT_HYPERPARAMETERS, ESTIMATOR_DEFAULTS, FIXED_PARAMETERS
    from mlops.training import ESTIMATORS

    assert set(ESTIMATOR_DEFAULTS) == set(ESTIMATORS) == set(DEFAULT_HYPERPARAMETERS)
    for name, estimator in ESTIMATORS.items():
        fixed = FIXED_PARAMETERS.get(name, {})
        assert ESTIMATOR_DEFAULTS[name] == estimator(**fixed).get_params(), (
            f"mlops/estimators.py is stale for {name}: copy {estimator.__name__}().get_params()"
        )


@pytest.mark.parametrize("estimator", [
    "logistic_regression", "random_forest", "gradient_boosting", "svc", "hist_gradient_boosting",
])
def test_every_estimator_s_own_default_hyperparameters_pass_its_check(estimator: str) -> None:
    from mlops.estimators import DEFAULT_HYPERPARAMETERS

    check_parameters({**VALID, "estimator": estimator, "hyperparameters": {}})
    check_parameters(
        {**VALID, "estimator": estimator, "hyperparameters": DEFAULT_HYPERPARAMETERS[estimator]}
    )


def test_a_forest_with_logistic_regression_s_hyperparameters_names_the_parameter() -> None:
    with pytest.raises(ParameterError, match="hyperparameters.C=1.0 is invalid: expected a "
                       "parameter of random_forest"):
        check_parameters({**VALID, "estimator": "random_forest"})


def test_an_svc_without_probabilities_is_refused() -> None:
    with pytest.raises(ParameterError) as caught:
        check_parameters({**VALID, "estimator": "svc", "hyperparameters": {"probability": False}})
    assert str(caught.value) == (
        "parameter hyperparameters.probability=False is invalid: expected True or leave it out "
        "(svc is always built with probability=True: the gate, scoring and serving read class "
        "probabilities)"
    )
