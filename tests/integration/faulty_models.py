"""Real model files with real faults, for the rollout tests: a slow model, a failing model.

They wrap a fitted scikit-learn pipeline and are pickled with joblib like any version; the
server unpickles them by importing this module (the tests put the repository on PYTHONPATH).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


class SlowModel:
    """Answers as the wrapped model, ``delay_s`` later."""

    def __init__(self, model: Any, delay_s: float) -> None:
        self.model = model
        self.delay_s = delay_s
        self.classes_ = model.classes_
        self.n_features_in_ = model.n_features_in_

    def predict(self, rows: np.ndarray) -> np.ndarray:
        time.sleep(self.delay_s)
        return np.asarray(self.model.predict(rows))

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_proba(rows))


class FailingModel:
    """Loads, then raises on every prediction (a model broken at inference time)."""

    def __init__(self, model: Any) -> None:
        self.classes_ = model.classes_
        self.n_features_in_ = model.n_features_in_

    def predict(self, rows: np.ndarray) -> np.ndarray:
        raise RuntimeError("injected fault: this model cannot predict")

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        raise RuntimeError("injected fault: this model cannot predict")


class ProbabilitiesFail:
    """Predicts labels, but ``predict_proba`` raises a plain ``RuntimeError``.

    The server computes the probability signal on a sample after the prediction, outside the
    model's own error handling: the exception goes past every handler, as the orjson fast path's
    ``TypeError`` did (issue 17 item 5).
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.classes_ = model.classes_
        self.n_features_in_ = model.n_features_in_

    def predict(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(rows))

    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        raise RuntimeError("injected fault in the probability signal")
