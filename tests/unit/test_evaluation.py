import numpy as np
import pandas as pd
import pytest

from mlops.evaluation import (
    ChampionMismatchError,
    check_champion,
    classification_curves,
    decide_deployment,
    incompatible_champion,
    majority_baseline,
    roc_curves,
    score_classifier,
)

GOOD = {"accuracy": 0.97, "balanced_accuracy": 0.95, "f1": 0.96, "f1_macro": 0.96, "roc_auc": 0.99}


def test_no_champion_deploys_when_the_floor_is_cleared() -> None:
    decision = decide_deployment(GOOD, None, min_score=0.9, max_degradation=0.02)
    assert decision.deploy and "no champion" in decision.reason


def test_below_the_floor_is_gated_even_without_champion() -> None:
    weak = {**GOOD, "accuracy": 0.6}
    decision = decide_deployment(weak, None, min_score=0.9, max_degradation=0.02)
    assert not decision.deploy
    assert decision.reason == "accuracy 0.6000 is below min_score 0.9000"


# Issue 17: the champion is compared on the gate metric (f1_macro here; it was always f1).
def test_worse_than_champion_beyond_tolerance_is_gated() -> None:
    champion = {**GOOD, "f1_macro": 0.99}
    decision = decide_deployment(GOOD, champion, 0.9, 0.02, "f1_macro")
    assert not decision.deploy and "0.0300 below the champion's" in decision.reason
    assert decision.reason.startswith("f1_macro 0.9600 is")


def test_within_tolerance_of_champion_deploys() -> None:
    champion = {**GOOD, "f1_macro": 0.97}
    assert decide_deployment(GOOD, champion, 0.9, 0.02, "f1_macro").deploy


def test_the_champion_is_compared_on_the_gate_metric_not_on_f1() -> None:
    champion = {**GOOD, "accuracy": 0.99, "f1_macro": 0.5}
    decision = decide_deployment(GOOD, champion, 0.9, 0.01, "accuracy")
    assert not decision.deploy
    assert decision.reason == (
        "accuracy 0.9700 is 0.0200 below the champion's 0.9900 (max_degradation 0.0100)"
    )
    assert decide_deployment(GOOD, champion, 0.9, 0.01, "f1_macro").deploy


def test_scores_and_curves_on_holdout(tiny_model, breast_cancer: pd.DataFrame) -> None:
    model, _ = tiny_model
    features = breast_cancer.drop(columns=["target"]).to_numpy(dtype=float)
    labels = breast_cancer["target"].to_numpy()
    scores = score_classifier(model, features, labels)
    assert scores["accuracy"] > 0.95 and 0.9 < scores["roc_auc"] <= 1.0
    classes, matrix, roc = classification_curves(model, features, labels)
    assert classes == ["0", "1"]
    assert sum(map(sum, matrix)) == len(labels)
    assert matrix[0][0] + matrix[1][1] == pytest.approx(scores["accuracy"] * len(labels))
    fpr, tpr, thresholds = roc
    assert fpr[0] == 0 and tpr[-1] == 1 and thresholds[0] == 1.0


def test_a_champion_on_other_features_gates_with_the_reason() -> None:
    decision = incompatible_champion(["mean radius", "mean texture"], ["sepal length (cm)"])
    assert decision is not None and not decision.deploy
    assert "champion takes 2 features" in decision.reason and "--model-name" in decision.reason
    assert incompatible_champion(["a", "b"], ["a", "b"]) is None


# Both gate boundaries are inclusive: exactly min_accuracy passes, exactly max_degradation
# passes. The values are binary fractions, so the comparison is exact (a `>=` for `>` or a
# `<=` for `<` fails these).
def test_accuracy_exactly_at_min_accuracy_passes() -> None:
    at_floor = {**GOOD, "accuracy": 0.75}
    assert decide_deployment(at_floor, None, min_score=0.75, max_degradation=0.0).deploy
    below = {**GOOD, "accuracy": 0.5}
    assert not decide_deployment(below, None, min_score=0.75, max_degradation=0.0).deploy


def test_f1_drop_exactly_at_max_degradation_passes() -> None:
    challenger = {**GOOD, "f1_macro": 0.5}
    assert decide_deployment(challenger, {**GOOD, "f1_macro": 0.75}, 0.5, 0.25, "f1_macro").deploy
    assert not decide_deployment(
        challenger, {**GOOD, "f1_macro": 0.875}, 0.5, 0.25, "f1_macro"
    ).deploy


def test_the_same_features_in_another_order_are_incompatible() -> None:
    assert incompatible_champion(["a", "b", "c"], ["a", "b", "c"]) is None
    decision = incompatible_champion(["a", "b", "c"], ["b", "a", "c"])
    assert decision is not None and not decision.deploy


def test_a_deployed_model_without_champion_alias_is_refused() -> None:
    with pytest.raises(ChampionMismatchError) as caught:
        check_champion("breast-cancer", deployed="1", is_deployed=True, champion=None)
    message = str(caught.value)
    assert "serves version 1 but MLflow has no 'champion' alias" in message
    assert "mlops promote breast-cancer" in message and "\n" not in message


def test_a_champion_alias_naming_another_version_is_refused() -> None:
    with pytest.raises(
        ChampionMismatchError,
        match="serves version 1 but MLflow's 'champion' alias names version 2",
    ):
        check_champion("breast-cancer", deployed="1", is_deployed=True, champion="2")


@pytest.mark.parametrize(
    ("deployed", "is_deployed", "champion"),
    [
        ("1", True, "1"),  # they agree
        (None, False, None),  # nothing deployed, no champion: the first run
        (None, False, "3"),  # serving state gone but the registry knows: gate against it
        (None, True, "3"),  # deployed, stable version unknown (cluster): trust the alias
    ],
)
def test_agreeing_or_unknowable_states_are_accepted(
    deployed: str | None, is_deployed: bool, champion: str | None
) -> None:
    check_champion("m", deployed=deployed, is_deployed=is_deployed, champion=champion)


def _imbalanced(n: int = 1000, positives: int = 30) -> np.ndarray:
    return np.array([1] * positives + [0] * (n - positives))


def test_a_model_that_always_says_the_majority_class_is_refused_saying_so() -> None:
    labels = _imbalanced()
    baseline = majority_baseline(labels)
    assert baseline[0] == 0 and baseline[1]["accuracy"] == pytest.approx(0.97)
    assert baseline[1]["balanced_accuracy"] == pytest.approx(0.5)
    assert baseline[1]["roc_auc"] == pytest.approx(0.5)

    class Majority:  # what an estimator that learnt nothing answers
        classes_ = np.array([0, 1])

        def predict(self, rows: np.ndarray) -> np.ndarray:
            return np.zeros(len(rows), dtype=int)

        def predict_proba(self, rows: np.ndarray) -> np.ndarray:
            return np.tile([0.97, 0.03], (len(rows), 1))

    scores = score_classifier(Majority(), np.zeros((1000, 1)), labels)
    assert scores["accuracy"] == pytest.approx(0.97)  # clears a 0.9 accuracy floor
    decision = decide_deployment(scores, None, 0.9, 0.02, "accuracy", baseline)
    assert not decision.deploy
    assert decision.reason.startswith(
        "accuracy 0.9700 is no better than always predicting the majority class 0 "
        "(0.9700 on the holdout): the model does not tell the classes apart; try "
        "--gate-metric balanced_accuracy"
    )
    # Without the baseline (the old gate) the same model was deployed.
    assert decide_deployment(scores, None, 0.9, 0.02, "accuracy").deploy


def test_a_model_better_than_the_majority_class_passes_the_baseline() -> None:
    labels = _imbalanced()
    baseline = majority_baseline(labels)
    scores = {
        "accuracy": 0.975,
        "balanced_accuracy": 0.8,
        "f1": 0.7,
        "f1_macro": 0.7,
        "roc_auc": 0.9,
    }
    decision = decide_deployment(scores, None, 0.9, 0.02, "accuracy", baseline)
    assert decision.deploy and "majority-class baseline" in decision.reason
    gated = decide_deployment(scores, None, 0.9, 0.02, "balanced_accuracy", baseline)
    assert gated.reason == "balanced_accuracy 0.8000 is below min_score 0.9000"


def test_an_undefined_gate_metric_is_refused_with_what_to_do() -> None:
    scores = {**GOOD, "roc_auc": float("nan")}
    decision = decide_deployment(scores, None, 0.5, 0.02, "roc_auc")
    assert not decision.deploy and "roc_auc is undefined on this holdout" in decision.reason
    with pytest.raises(ValueError, match="gate_metric 'auc' is unknown"):
        decide_deployment(GOOD, None, 0.5, 0.02, "auc")


@pytest.mark.parametrize(
    "labels",
    [
        ["setosa", "versicolor", "virginica"],
        [False, True],
        ["no", "yes"],
    ],
)
def test_metrics_and_curves_of_text_bool_and_multi_class_labels(labels: list) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    y = np.array(labels * 40, dtype=object if isinstance(labels[0], str) else bool)
    index = np.unique(y, return_inverse=True)[1]
    features = index[:, None] + rng.normal(scale=0.6, size=(len(y), 2))
    model = LogisticRegression().fit(features, y)
    scores = score_classifier(model, features, y)
    assert set(scores) == {"accuracy", "balanced_accuracy", "f1", "f1_macro", "roc_auc"}
    assert 0.7 < scores["roc_auc"] <= 1 and scores["f1"] == scores["f1_macro"]
    names = [f"name {c}" for c in model.classes_]
    shown, matrix, roc = classification_curves(model, features, y, names)
    assert shown == names and sum(map(sum, matrix)) == len(y)
    assert (roc is None) == (len(labels) > 2)  # KFP's ROC curve is a binary one
    curves = roc_curves(model, features, y, names)
    assert [c[0] for c in curves] == (names[1:] if len(labels) == 2 else names)


def test_a_champion_whose_feature_changed_type_is_incompatible() -> None:
    decision = incompatible_champion(
        ["a", "b"],
        ["a", "b"],
        {"a": "numeric", "b": "numeric"},
        {"a": "numeric", "b": "categorical"},
    )
    assert decision is not None and decision.reason == (
        "feature 'b' is categorical in this model but numeric in the champion's: use another "
        "--model-name"
    )
