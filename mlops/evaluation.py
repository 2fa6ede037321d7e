"""Score the new model (challenger) and the production model (champion) on one holdout.

The decision to deploy is made here, from numbers that are also logged for the KFP UI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score, roc_curve


def score_classifier(model: Any, features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, F1 (macro) and ROC AUC (one-vs-rest for several classes) on the holdout."""
    predicted = model.predict(features)
    proba = model.predict_proba(features)
    if proba.shape[1] == 2:
        auc = roc_auc_score(labels, proba[:, 1])
    else:
        auc = roc_auc_score(labels, proba, multi_class="ovr")
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "f1": float(f1_score(labels, predicted, average="macro")),
        "roc_auc": float(auc),
    }


@dataclass(frozen=True)
class Decision:
    """Whether to deploy the challenger, and why (a sentence a person reads)."""

    deploy: bool
    reason: str


def decide_deployment(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    min_accuracy: float,
    max_degradation: float,
) -> Decision:
    """Gate: the challenger must clear ``min_accuracy`` and lose at most ``max_degradation``.

    Args:
        challenger: Holdout metrics of the new model.
        champion: Holdout metrics of the production model on the same rows, or ``None``.
        min_accuracy: The absolute floor for accuracy, even without a champion.
        max_degradation: How much lower than the champion's the challenger's F1 may be.
    """
    if challenger["accuracy"] < min_accuracy:
        return Decision(
            False,
            f"accuracy {challenger['accuracy']:.4f} is below min_accuracy {min_accuracy:.4f}",
        )
    if champion is None:
        return Decision(True, "no champion in production; the challenger clears min_accuracy")
    drop = champion["f1"] - challenger["f1"]
    if drop > max_degradation:
        return Decision(
            False,
            f"f1 {challenger['f1']:.4f} is {drop:.4f} below the champion's "
            f"{champion['f1']:.4f} (max_degradation {max_degradation:.4f})",
        )
    return Decision(
        True,
        f"f1 {challenger['f1']:.4f} vs champion {champion['f1']:.4f}: "
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
    champion_features: list[str], challenger_features: list[str]
) -> Decision | None:
    """A gated decision when the champion was trained on other features, else ``None``.

    The two cannot be scored on the same rows, and serving the challenger would change the
    request schema under the clients' feet: that takes a new model name, not a new version.
    """
    if champion_features == challenger_features:
        return None
    return Decision(
        False,
        f"the champion takes {len(champion_features)} features "
        f"({', '.join(champion_features[:3])}...), this model {len(challenger_features)} "
        f"({', '.join(challenger_features[:3])}...): use another --model-name",
    )


def classification_curves(
    model: Any, features: np.ndarray, labels: np.ndarray
) -> tuple[list[str], list[list[int]], tuple[list[float], list[float], list[float]] | None]:
    """Confusion matrix (with class names) and, for two classes, the ROC curve points."""
    classes = [str(c) for c in model.classes_]
    matrix = confusion_matrix(labels, model.predict(features), labels=model.classes_).tolist()
    roc = None
    if len(classes) == 2:
        fpr, tpr, thresholds = roc_curve(labels, model.predict_proba(features)[:, 1])
        # The UI draws every point; the first threshold is inf, which JSON cannot hold.
        thresholds[0] = 1.0
        roc = (fpr.tolist(), tpr.tolist(), thresholds.tolist())
    return classes, matrix, roc
