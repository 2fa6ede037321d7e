"""One revision's model: a ``kserve.Model`` serving a store version as the sklearn runtime does.

Like KServe's sklearnserver (``python/sklearnserver/sklearnserver/model.py``): ``load()`` finds
the model file, loads it and sets ``ready``; ``predict()`` turns the request into an array,
predicts, and answers in the shapes of KServe's ``get_predict_response`` (v2 output
``output-0``, v1 ``predictions``). Unlike it, ``load()`` goes through the project's store,
which refuses a file whose sha256 differs from ``metadata.json``, and a bad request gets
``InvalidInput`` (400) that names the problem instead of a 500 from deep inside scikit-learn.
"""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from kserve import Model
from kserve.errors import InferenceError, InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.utils.numpy_codec import from_np_dtype
from kserve.utils.utils import get_predict_response

from serving.drift import DriftMonitor, sample_rows
from serving.features import (
    CATEGORICAL,
    DATAFRAME,
    FeatureSchema,
    as_labels,
    label_datatype,
    schema_of,
)
from serving.inputs import ModelInput, request_input, wants_probabilities
from serving.observability import current_request, record_predictions


@dataclass(frozen=True)
class Revision:
    """What a revision serves.

    Attributes:
        name: Revision name, e.g. ``breast-cancer-predictor-00002``.
        storage_uri: The store version directory.
        model_version: The store version number, as a string (the v2 ``model_version``).
    """

    name: str
    storage_uri: str
    model_version: str


class RevisionModel(Model):
    """A scikit-learn model of one revision, answering as KServe's sklearn runtime does."""

    def __init__(self, model_name: str, revision: Revision) -> None:
        """Create the (not yet loaded) model.

        Args:
            model_name: The served model's name (the InferenceService name).
            revision: The revision this model belongs to.
        """
        super().__init__(model_name)
        self.revision = revision
        self.ready = False
        self.feature_names: list[str] = []
        self.schema = FeatureSchema([])
        self.label_datatype = "INT64"
        self.metadata: dict[str, Any] = {}
        self.drift: DriftMonitor | None = None
        self.classes: frozenset[str] = frozenset()
        self._model: Any = None

    def load(self) -> bool:
        """Download the version, check its sha256, load it and check its feature count.

        Returns:
            ``True`` (the model is ready).

        Raises:
            mlops.store.StoreError: When the version is missing or its file fails the check.
            ValueError: When metadata and model disagree on the number of features.
        """
        import joblib

        from mlops.store import fetch_version

        with tempfile.TemporaryDirectory(prefix="mlops-revision-") as tmp:
            model_path, metadata = fetch_version(self.revision.storage_uri, Path(tmp))
            model = joblib.load(model_path)
        feature_names = list(metadata.get("feature_names") or [])
        n_features = getattr(model, "n_features_in_", len(feature_names))
        if not feature_names:
            feature_names = [f"feature_{i}" for i in range(n_features)]
        if len(feature_names) != n_features:
            raise ValueError(
                f"{self.revision.storage_uri}: metadata.json lists {len(feature_names)} "
                f"feature_names but the model takes {n_features} features"
            )
        schema = schema_of(metadata, feature_names, model)
        reference = metadata.get("reference_statistics")
        numeric = schema.numeric_names
        self.drift = (
            DriftMonitor(numeric, reference, self.labels) if reference and numeric else None
        )
        classes = np.asarray(getattr(model, "classes_", np.array([])))
        self.label_datatype = label_datatype(metadata, classes)
        self.classes = frozenset(str(c) for c in as_labels(classes, self.label_datatype).tolist())
        self._model, self.metadata, self.feature_names = model, metadata, feature_names
        self.schema = schema
        self.ready = True
        return self.ready

    def predict(
        self,
        payload: dict[str, Any] | InferRequest,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        """Predict labels, or class probabilities when the request asks (``predict_proba``).

        Args:
            payload: A v1 body or a v2 ``InferRequest``.
            headers: Request headers (unused).

        Returns:
            v2: ``output-0`` of shape ``[rows]`` (labels) or ``[rows, classes]``
            (probabilities), with ``model_version`` set; v1: ``{"predictions": [...]}``.

        Raises:
            InvalidInput: When the request is malformed (the message says how).
            InferenceError: When the model itself fails.
        """
        given = self.model_input(payload)
        probabilities = wants_probabilities(payload)
        if probabilities and not hasattr(self._model, "predict_proba"):
            raise InvalidInput(f"{type(self._model).__name__} has no predict_proba")
        try:
            with self._sklearn_config():
                result: np.ndarray = (
                    self._model.predict_proba(given.model_input)
                    if probabilities
                    else as_labels(self._model.predict(given.model_input), self.label_datatype)
                )
        except Exception as err:  # scikit-learn raises many types; the server maps this to 500
            raise InferenceError(f"{self.revision.name}: {type(err).__name__}: {err}") from err
        if self.drift is not None:
            # Drift bins hold numbers: a row with a missing numeric value is left out.
            complete = given.numeric[~np.isnan(given.numeric).any(axis=1)]
            if len(complete):
                self.drift.observe(np.ascontiguousarray(complete))
        self._record(given, result, probabilities)
        info = current_request()
        if info is not None:
            info.rows = given.rows
        if isinstance(payload, InferRequest):
            return self._v2_response(payload, result)
        return get_predict_response(payload, result, self.name)

    @property
    def labels(self) -> tuple[str, str, str]:
        """``(model, revision, model_version)``: the labels of this revision's metrics."""
        return (self.name, self.revision.name, self.revision.model_version)

    def model_input(self, payload: dict[str, Any] | InferRequest) -> ModelInput:
        """The request checked and in the model's form (matrix or DataFrame, feature order).

        Raises:
            InvalidInput: When the request is malformed (the message says how).
        """
        return request_input(payload, self.schema)

    def predict_labels(self, given: ModelInput) -> np.ndarray:
        """The model's labels for a checked request, recording nothing (the shadow compares)."""
        with self._sklearn_config():
            return as_labels(self._model.predict(given.model_input), self.label_datatype)

    def _sklearn_config(self) -> Any:
        # Tensors are checked finite (or their NaN imputed): scikit-learn need not check again.
        # A DataFrame holds strings and None, which only the model's own steps handle.
        finite = self.schema.input_kind != DATAFRAME and not self.schema.allow_missing
        return sklearn.config_context(assume_finite=finite)

    def _record(self, given: ModelInput, result: np.ndarray, probabilities: bool) -> None:
        """The canary signals: predicted classes of every row, top probability of a sample."""
        proba_of = getattr(self._model, "predict_proba", None)
        if probabilities:
            classes = as_labels(np.asarray(self._model.classes_), self.label_datatype)
            predicted = classes.take(result.argmax(axis=1))
            top = sample_rows(result).max(axis=1)
        else:
            predicted, top = result, None
            if proba_of is not None:
                sample = _sample(given.model_input)
                with self._sklearn_config():
                    top = proba_of(sample).max(axis=1)
        record_predictions(self.labels, self.classes, predicted, top)

    def _v2_response(self, request: InferRequest, result: np.ndarray) -> InferResponse:
        # What get_predict_response builds, but holding the array: it would turn the array into
        # a list, and KServe's encoder turns that list back into an array and into a list
        # again; given the array, the encoder makes the one list (or binary tensor) it needs.
        output = InferOutput(
            name="output-0",
            shape=list(result.shape),
            datatype=from_np_dtype(result.dtype),
            data=result,
        )
        return InferResponse(
            response_id=request.id or str(uuid.uuid4()),
            model_name=self.name,
            infer_outputs=[output],
            model_version=self.revision.model_version,
            use_binary_outputs=request.use_binary_outputs,
            requested_outputs=request.request_outputs,
        )

    def get_input_types(self) -> list[dict[str, Any]]:
        """The v2 metadata of the inputs: one tensor, or one per column (the pandas codec)."""
        if self.schema.input_kind != DATAFRAME:
            width = len(self.feature_names)
            return [{"name": "input-0", "datatype": "FP64", "shape": [-1, width]}]
        return [
            {
                "name": name,
                "datatype": "BYTES" if self.schema.types.get(name) == CATEGORICAL else "FP64",
                "shape": [-1],
                "parameters": {"content_type": "pd"},
            }
            for name in self.feature_names
        ]

    def get_output_types(self) -> list[dict[str, Any]]:
        """The v2 metadata of the output: labels in the classes' datatype.

        With ``predict_proba`` the output is FP64 ``[-1, classes]`` instead.
        """
        return [{"name": "output-0", "datatype": self.label_datatype, "shape": [-1]}]


def _sample(model_input: Any) -> Any:
    """``sample_rows`` of a matrix or a DataFrame (the probability signal's sample)."""
    if isinstance(model_input, np.ndarray):
        return sample_rows(model_input)
    return model_input.iloc[sample_rows(np.arange(len(model_input)))]
