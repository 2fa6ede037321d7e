"""Check every pipeline parameter before anything is written (store, MLflow, serving state).

One function, called by ``mlops run`` before the pipeline starts and by the pipeline's first
step in the cluster (a run started from the KFP UI skips the CLI). A bad value is one
``ParameterError`` naming the parameter, the value and what is expected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from mlops.estimators import ESTIMATOR_DEFAULTS, FIXED_PARAMETERS

# KServe's webhook accepts an InferenceService name matching this (a DNS-1035 label: it starts
# with a letter); the name is also the store folder and the registered model, so it must not
# carry '/', '..' or upper case.
_ISVC_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# Knative puts the name into 63-character DNS labels: the revision "<name>-predictor-00001"
# and the tagged route host "latest-<name>-predictor" (7 + 10 characters around the name).
MAX_MODEL_NAME_LENGTH = 63 - len("latest-") - len("-predictor")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN_MAX = 253
TARGETS = ("local", "kubernetes")
# The holdout metrics the gate can judge by (every one: higher is better, within [0, 1]);
# ``mlops.evaluation.score_classifier`` computes each.
GATE_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc")
# The gate's floor was named for the one metric it judged; old scripts still pass it.
LEGACY_MIN_SCORE = "min_accuracy"


class ParameterError(ValueError):
    """A pipeline parameter is invalid; the message names it and what is expected."""


def _fail(name: str, value: Any, expected: str) -> ParameterError:
    return ParameterError(f"parameter {name}={value!r} is invalid: expected {expected}")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise _fail(name, value, "a number")
    return float(value)


def _integer(name: str, value: Any) -> int:
    # KFP may carry integers as doubles (protobuf Struct); 3.0 is 3, 3.5 is not.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(name, value, "an integer")
    return value


def check_model_name(name: Any) -> None:
    """A model name usable as InferenceService name, store folder and registered model.

    Raises:
        ParameterError: When it is not a DNS-1035 label of at most ``MAX_MODEL_NAME_LENGTH``.
    """
    if not isinstance(name, str) or not _ISVC_NAME.fullmatch(name):
        raise _fail(
            "model_name",
            name,
            "lower case letters, digits and '-', starting with a letter and ending with a "
            "letter or digit (an InferenceService name), e.g. 'breast-cancer'",
        )
    if len(name) > MAX_MODEL_NAME_LENGTH:
        raise _fail(
            "model_name", name, f"at most {MAX_MODEL_NAME_LENGTH} characters (Knative's host names)"
        )


def check_hyperparameters(estimator: Any, hyperparameters: Any) -> None:
    """The estimator is known and every hyperparameter is one of its parameters, sanely typed.

    A hyperparameter whose default is a number must be a number; a string default takes a
    string or a number (``max_features="sqrt"`` or ``0.5``); ``None`` defaults take anything.

    Raises:
        ParameterError: On an unknown estimator, an unknown name or an ill-typed value.
    """
    if estimator not in ESTIMATOR_DEFAULTS:
        raise _fail("estimator", estimator, f"one of {sorted(ESTIMATOR_DEFAULTS)}")
    if not isinstance(hyperparameters, Mapping):
        raise _fail("hyperparameters", hyperparameters, 'a JSON object, e.g. {"C": 0.5}')
    defaults = ESTIMATOR_DEFAULTS[estimator]
    for key, value in hyperparameters.items():
        if key not in defaults:
            raise _fail(
                f"hyperparameters.{key}", value, f"a parameter of {estimator}: {sorted(defaults)}"
            )
        fixed = FIXED_PARAMETERS.get(estimator, {})
        if key in fixed and value != fixed[key]:
            raise _fail(
                f"hyperparameters.{key}",
                value,
                f"{fixed[key]!r} or leave it out ({estimator} is always built with "
                f"{key}={fixed[key]!r}: the gate, scoring and serving read class probabilities)",
            )
        default = defaults[key]
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int | float):
            ok = numeric and math.isfinite(value)
        elif isinstance(default, str):
            ok = isinstance(value, str) or numeric
        else:
            ok = True
        if not ok:
            raise _fail(
                f"hyperparameters.{key}", value, f"a value like {estimator}'s default {default!r}"
            )


def check_parameters(parameters: Mapping[str, Any]) -> None:
    """Check the pipeline parameters that are present (absent ones keep their defaults).

    Args:
        parameters: Pipeline arguments by name (``training_pipeline``'s parameter names).

    Raises:
        ParameterError: On the first invalid parameter.
    """
    p = parameters
    if "model_name" in p:
        check_model_name(p["model_name"])
    if "canary_traffic_percent" in p:
        percent = _integer("canary_traffic_percent", p["canary_traffic_percent"])
        if not 0 <= percent <= 100:
            raise _fail("canary_traffic_percent", percent, "an integer within 0..100")
    if "test_size" in p and not 0 < _number("test_size", p["test_size"]) < 1:
        raise _fail("test_size", p["test_size"], "a fraction within (0, 1), e.g. 0.2")
    for name in ("min_score", LEGACY_MIN_SCORE, "max_degradation"):
        if name in p and not 0 <= _number(name, p[name]) <= 1:
            raise _fail(name, p[name], "a fraction within [0, 1]")
    if "gate_metric" in p and p["gate_metric"] not in GATE_METRICS:
        raise _fail("gate_metric", p["gate_metric"], f"one of {list(GATE_METRICS)}")
    if "label_noise" in p and not 0 <= _number("label_noise", p["label_noise"]) < 1:
        raise _fail("label_noise", p["label_noise"], "a fraction within [0, 1)")
    if "min_rows" in p and _integer("min_rows", p["min_rows"]) < 1:
        raise _fail("min_rows", p["min_rows"], "an integer >= 1")
    if "seed" in p:
        _integer("seed", p["seed"])
    if "estimator" in p or "hyperparameters" in p:
        check_hyperparameters(
            p.get("estimator", "logistic_regression"), p.get("hyperparameters", {})
        )
    if "namespace" in p and not _is_dns_label(p["namespace"]):
        raise _fail("namespace", p["namespace"], "a DNS label (Kubernetes namespace)")
    account = p.get("service_account")
    if account and not _is_dns_subdomain(account):
        raise _fail("service_account", account, "a DNS subdomain (ServiceAccount name)")
    if "deploy_target" in p and p["deploy_target"] not in TARGETS:
        raise _fail("deploy_target", p["deploy_target"], f"one of {list(TARGETS)}")
    for name in ("source", "label_column", "store_uri", "tracking_uri"):
        if name in p and (not isinstance(p[name], str) or not p[name].strip()):
            raise _fail(name, p[name], "a non-empty string")
    check_rollout_parameters(p)


# --- The pipeline's rollout step (rollout_steps, rollout_interval_s, rollout_min_requests) ---


def check_rollout_parameters(parameters: Mapping[str, Any]) -> None:
    """The rollout step's parameters, checked by the rules the step itself applies.

    Called before anything is deployed (the step runs after the deploy, and a bad value found
    there would leave a canary that nothing rolls out). Empty ``rollout_steps`` means no
    automated rollout: the interval and request count are then not used, but still checked.

    Raises:
        ParameterError: On the first invalid parameter.
    """
    from serving.canary_analysis import Thresholds
    from serving.rollout import RolloutPlan, parse_steps

    p = parameters
    steps = p.get("rollout_steps", "")
    if not isinstance(steps, str):
        raise _fail("rollout_steps", steps, "canary shares in percent as text, e.g. '10,50,100'")
    interval = _number("rollout_interval_s", p.get("rollout_interval_s", 60.0))
    if not interval > 0:
        raise _fail("rollout_interval_s", interval, "seconds, more than 0")
    min_requests = _integer("rollout_min_requests", p.get("rollout_min_requests", 50))
    if min_requests < 1:
        raise _fail("rollout_min_requests", min_requests, "an integer >= 1")
    if not steps.strip():
        return
    try:
        RolloutPlan(parse_steps(steps), interval, Thresholds(min_requests=min_requests))
    except ValueError as err:
        raise _fail(
            "rollout_steps", steps, f"increasing shares within 1..100, e.g. '10,50,100' ({err})"
        ) from err
    if p.get("deploy_target", "kubernetes") != "kubernetes":
        raise _fail(
            "rollout_steps",
            steps,
            "empty with deploy_target local (the step runs in the cluster; locally use "
            "`mlops run --rollout auto`)",
        )


def _is_dns_label(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 63 and bool(_DNS_LABEL.fullmatch(value))


def _is_dns_subdomain(value: Any) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= _DNS_SUBDOMAIN_MAX
        and all(_is_dns_label(part) for part in value.split("."))
    )
