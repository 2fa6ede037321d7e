"""Score the new model (challenger) and the production model (champion) on one holdout.

The decision to deploy is made here, from numbers that are also logged for the KFP UI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.dummy import DummyClassifier
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
    roc_curve,
)

from mlops.parameters import GATE_METRICS

# Scores closer than this are equal: "no better than the majority class" includes a tie that
# differs in the last bits of a float.
_TIE = 1e-9


def score_classifier(model: Any, features: Any, labels: np.ndarray) -> dict[str, float]:
    """The holdout metrics, every one in [0, 1], higher is better (``GATE_METRICS``).

    ``accuracy``, ``balanced_accuracy`` (the mean recall per class), ``f1_macro`` (also as
    ``f1``, its name before the gate metric could be chosen) and ``roc_auc`` (one-vs-rest for
    several classes; NaN when the holdout lacks a class, as it is then undefined).
    """
    predicted = model.predict(features)
    proba = model.predict_proba(features)
    f1 = float(f1_score(labels, predicted, average="macro"))
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
        "f1": f1,
        "f1_macro": f1,
        "roc_auc": _roc_auc(labels, proba, np.asarray(model.classes_)),
    }


def _roc_auc(labels: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    try:
        if proba.shape[1] == 2:
            return float(roc_auc_score(labels == classes[1], proba[:, 1]))
        return float(roc_auc_score(labels, proba, multi_class="ovr", labels=classes))
    except ValueError:  # a class absent from the holdout: the AUC is undefined
        return math.nan


def majority_baseline(labels: np.ndarray) -> tuple[Any, dict[str, float]]:
    """The majority class of the holdout, and the metrics of always predicting it.

    The model answers with the class shares as probabilities (scikit-learn's
    ``DummyClassifier(strategy="prior")``), so its ROC AUC is 0.5.
    """
    rows = np.zeros((len(labels), 1))
    dummy = DummyClassifier(strategy="prior").fit(rows, labels)
    majority = dummy.predict(rows[:1])[0]
    return majority.item() if isinstance(majority, np.generic) else majority, score_classifier(
        dummy, rows, labels
    )


@dataclass(frozen=True)
class Decision:
    """Whether to deploy the challenger, and why (a sentence a person reads)."""

    deploy: bool
    reason: str


def decide_deployment(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    min_score: float,
    max_degradation: float,
    gate_metric: str = "accuracy",
    baseline: tuple[Any, dict[str, float]] | None = None,
) -> Decision:
    """Gate the challenger on one metric: a floor, the majority class, then the champion.

    Args:
        challenger: Holdout metrics of the new model.
        champion: Holdout metrics of the production model on the same rows, or ``None``.
        min_score: The absolute floor of ``gate_metric``, even without a champion.
        max_degradation: How much lower than the champion's ``gate_metric`` the challenger's
            may be.
        gate_metric: One of ``GATE_METRICS``.
        baseline: ``majority_baseline`` of the holdout: the challenger must beat it.

    Raises:
        ValueError: When ``gate_metric`` is not one of ``GATE_METRICS``.
    """
    if gate_metric not in GATE_METRICS:
        raise ValueError(f"gate_metric {gate_metric!r} is unknown: use one of {GATE_METRICS}")
    score = challenger[gate_metric]
    if math.isnan(score):
        return Decision(
            False,
            f"{gate_metric} is undefined on this holdout (a class is missing from it): choose "
            "another --gate-metric, or a larger --test-size",
        )
    if score < min_score:
        return Decision(False, f"{gate_metric} {score:.4f} is below min_score {min_score:.4f}")
    if baseline is not None and score <= baseline[1][gate_metric] + _TIE:
        return Decision(
            False,
            f"{gate_metric} {score:.4f} is no better than always predicting the majority class "
            f"{baseline[0]!r} ({baseline[1][gate_metric]:.4f} on the holdout): the model does "
            "not tell the classes apart; try --gate-metric balanced_accuracy, or "
            "class_weight='balanced' in --hyperparameters",
        )
    if champion is None:
        return Decision(
            True,
            f"no champion in production; {gate_metric} {score:.4f} clears min_score "
            f"{min_score:.4f}" + (" and the majority-class baseline" if baseline else ""),
        )
    drop = champion[gate_metric] - score
    if drop > max_degradation:
        return Decision(
            False,
            f"{gate_metric} {score:.4f} is {drop:.4f} below the champion's "
            f"{champion[gate_metric]:.4f} (max_degradation {max_degradation:.4f})",
        )
    return Decision(
        True,
        f"{gate_metric} {score:.4f} vs champion {champion[gate_metric]:.4f}: "
        f"within max_degradation {max_degradation:.4f}",
    )


class ChampionMismatchError(RuntimeError):
    """MLflow's ``champion`` alias disagrees with the deployed InferenceService."""


def check_champion(
    model_name: str, deployed: str | None, is_deployed: bool, champion: str | None
) -> None:
    """Refuse to gate against the registry when it disagrees with what serves.

    The deployed InferenceService is the source of truth: without this check, a lost MLflow
    database (or a crash during the first deploy) reads as "no champion", and any model that
    clears ``min_accuracy`` is deployed next to a far better one.

    Args:
        model_name: The registered model and InferenceService name.
        deployed: The store version of the stable (production) revision, ``None`` if unknown.
        is_deployed: Whether an InferenceService ``model_name`` exists.
        champion: The store version MLflow's ``champion`` alias names, or ``None``.

    Raises:
        ChampionMismatchError: When a model is deployed and the alias is missing, or names
            another version than the one serving.
    """
    fix = (
        f"set the alias to the serving version (`mlops promote {model_name}` re-reads the "
        "traffic), or restore the MLflow database"
    )
    if is_deployed and champion is None:
        serving = f"version {deployed}" if deployed else "a model"
        raise ChampionMismatchError(
            f"InferenceService {model_name!r} serves {serving} but MLflow has no "
            f"'champion' alias for {model_name!r}: refusing to gate without it; {fix}"
        )
    if deployed is not None and champion is not None and str(champion) != str(deployed):
        raise ChampionMismatchError(
            f"InferenceService {model_name!r} serves version {deployed} but MLflow's "
            f"'champion' alias names version {champion}: refusing to gate; {fix}"
        )


def incompatible_champion(
    champion_features: list[str],
    challenger_features: list[str],
    champion_types: dict[str, str] | None = None,
    challenger_types: dict[str, str] | None = None,
) -> Decision | None:
    """A gated decision when the champion was trained on other features, else ``None``.

    The two cannot be scored on the same rows, and serving the challenger would change the
    request schema under the clients' feet: that takes a new model name, not a new version.
    Feature types absent (an older version) mean every feature numeric.
    """
    if champion_features == challenger_features:
        before = champion_types or dict.fromkeys(champion_features, "numeric")
        after = challenger_types or dict.fromkeys(challenger_features, "numeric")
        changed = [name for name in challenger_features if before.get(name) != after.get(name)]
        if not changed:
            return None
        return Decision(
            False,
            f"feature {changed[0]!r} is {after.get(changed[0])} in this model but "
            f"{before.get(changed[0])} in the champion's: use another --model-name",
        )
    return Decision(
        False,
        f"the champion takes {len(champion_features)} features "
        f"({', '.join(champion_features[:3])}...), this model {len(challenger_features)} "
        f"({', '.join(challenger_features[:3])}...): use another --model-name",
    )


def display_names(model: Any, class_names: list[str] | None = None) -> list[str]:
    """A name per class of the model: ``class_names`` when given (parallel), else ``str(c)``."""
    classes = [str(c) for c in np.asarray(model.classes_).tolist()]
    return list(class_names) if class_names and len(class_names) == len(classes) else classes


def classification_curves(
    model: Any, features: Any, labels: np.ndarray, class_names: list[str] | None = None
) -> tuple[list[str], list[list[int]], tuple[list[float], list[float], list[float]] | None]:
    """Confusion matrix (with class names) and, for two classes, the ROC curve points."""
    names = display_names(model, class_names)
    matrix = confusion_matrix(labels, model.predict(features), labels=model.classes_).tolist()
    roc = None
    if len(names) == 2 and len(np.unique(labels)) == 2:
        fpr, tpr, thresholds = roc_curve(
            labels == model.classes_[1], model.predict_proba(features)[:, 1]
        )
        # The UI draws every point; the first threshold is inf, which JSON cannot hold.
        thresholds[0] = 1.0
        roc = (fpr.tolist(), tpr.tolist(), thresholds.tolist())
    return names, matrix, roc


def roc_curves(
    model: Any, features: Any, labels: np.ndarray, class_names: list[str] | None = None
) -> list[tuple[str, list[float], list[float]]]:
    """The ROC curves of the holdout as ``(class name, fpr, tpr)``.

    One curve, the positive class's, for two classes; else one per class against the rest (a
    class absent from the holdout has none).
    """
    names = display_names(model, class_names)
    proba = model.predict_proba(features)
    columns = [1] if len(names) == 2 else range(len(names))
    curves = []
    for column in columns:
        positive = labels == model.classes_[column]
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, proba[:, column])
        curves.append((names[column], fpr.tolist(), tpr.tolist()))
    return curves
