"""Every pipeline parameter is checked before anything is written (issue 8 item 12)."""

import pytest

from mlops.parameters import MAX_MODEL_NAME_LENGTH, ParameterError, check_parameters

VALID = {
    "model_name": "breast-cancer",
    "canary_traffic_percent": 10,
    "test_size": 0.2,
    "min_accuracy": 0.9,
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
        ("min_accuracy", 1.5, "within [0, 1]"),
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
    from mlops.estimators import ESTIMATOR_DEFAULTS
    from mlops.training import ESTIMATORS

    assert set(ESTIMATOR_DEFAULTS) == set(ESTIMATORS)
    for name, estimator in ESTIMATORS.items():
        assert ESTIMATOR_DEFAULTS[name] == estimator().get_params(), (
            f"mlops/estimators.py is stale for {name}: copy {estimator.__name__}().get_params()"
        )
