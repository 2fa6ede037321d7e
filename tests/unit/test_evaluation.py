import pandas as pd
import pytest

from mlops.evaluation import (
    ChampionMismatchError,
    check_champion,
    classification_curves,
    decide_deployment,
    incompatible_champion,
    score_classifier,
)

GOOD = {"accuracy": 0.97, "f1": 0.96, "roc_auc": 0.99}


def test_no_champion_deploys_when_the_floor_is_cleared() -> None:
    decision = decide_deployment(GOOD, None, min_accuracy=0.9, max_degradation=0.02)
    assert decision.deploy and "no champion" in decision.reason


def test_below_the_floor_is_gated_even_without_champion() -> None:
    weak = {**GOOD, "accuracy": 0.6}
    decision = decide_deployment(weak, None, min_accuracy=0.9, max_degradation=0.02)
    assert not decision.deploy
    assert decision.reason == "accuracy 0.6000 is below min_accuracy 0.9000"


def test_worse_than_champion_beyond_tolerance_is_gated() -> None:
    champion = {**GOOD, "f1": 0.99}
    decision = decide_deployment(GOOD, champion, min_accuracy=0.9, max_degradation=0.02)
    assert not decision.deploy and "0.0300 below the champion's" in decision.reason


def test_within_tolerance_of_champion_deploys() -> None:
    champion = {**GOOD, "f1": 0.97}
    assert decide_deployment(GOOD, champion, min_accuracy=0.9, max_degradation=0.02).deploy


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
    assert decide_deployment(at_floor, None, min_accuracy=0.75, max_degradation=0.0).deploy
    below = {**GOOD, "accuracy": 0.5}
    assert not decide_deployment(below, None, min_accuracy=0.75, max_degradation=0.0).deploy


def test_f1_drop_exactly_at_max_degradation_passes() -> None:
    challenger = {**GOOD, "f1": 0.5}
    assert decide_deployment(challenger, {**GOOD, "f1": 0.75}, 0.5, max_degradation=0.25).deploy
    assert not decide_deployment(challenger, {**GOOD, "f1": 0.875}, 0.5, 0.25).deploy


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
    with pytest.raises(ChampionMismatchError, match="serves version 1 but MLflow's 'champion'"
                       " alias names version 2"):
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
