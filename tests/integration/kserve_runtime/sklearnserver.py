"""A stand-in for KServe's `kserve-sklearnserver` image, run by the `kserve` package of v0.20.0.

Run by the Python of the runtime venv (`make test`: ``MLOPS_KSERVE_RUNTIME_PYTHON``, a venv with
``kserve==0.20.0`` and ``scikit-learn==1.5.2``, what kserve v0.20.0
``python/sklearnserver/pyproject.toml`` pins: ``scikit-learn~=1.5.1``), never by the project's.
The sklearnserver itself is not on PyPI; this file follows, without copying, what it does at
the tag:

- kserve@v0.20.0:python/sklearnserver/sklearnserver/model.py (``SKLearnModel``): ``load()``
  downloads ``model_dir`` with ``kserve_storage.Storage.download`` (a local directory is used
  as it is), requires exactly one file ending in ``.joblib``, ``.pkl`` or ``.pickle``
  (``ModelMissingError`` for none, ``RuntimeError`` for several) and ``joblib.load``s it;
  ``predict()`` turns the request into the model's input with KServe's own
  ``get_predict_input`` (the pandas codec becomes a DataFrame in the request's column order),
  calls ``predict_proba`` when the environment has ``PREDICT_PROBA=true`` (and the model has
  it) and ``predict`` otherwise (a request's ``parameters.predict_proba`` is not read), answers
  with KServe's own ``get_predict_response``, and turns any exception into ``InferenceError``.
- kserve@v0.20.0:python/sklearnserver/sklearnserver/__main__.py: KServe's model-server argument
  parser plus a required ``--model_dir``; the model is loaded, then ``kserve.ModelServer()``
  starts with it. (Its fallback to a model repository when no model file is found is left out:
  a stored version always holds its one ``model.joblib``.)
- kserve@v0.20.0:config/runtimes/kserve-sklearnserver.yaml (the ClusterServingRuntime): the
  container's args are ``--model_name={{.Name}} --model_dir=/mnt/models --http_port=8080`` and
  it sets no environment, so the cluster's predictor answers labels.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import joblib
import kserve
from kserve.errors import InferenceError, ModelMissingError
from kserve.protocol.infer_type import InferRequest
from kserve.utils.utils import get_predict_input, get_predict_response
from kserve_storage import Storage

# The file names sklearnserver loads, and its switch to probabilities (server-wide).
MODEL_SUFFIXES = (".joblib", ".pkl", ".pickle")
PROBABILITIES_ENV = "PREDICT_PROBA"


class StoredSklearnModel(kserve.Model):
    """One scikit-learn model file of a directory, served as sklearnserver serves it."""

    def __init__(self, name: str, model_dir: str) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.ready = False
        self._model: Any = None

    def load(self) -> bool:
        local = Path(Storage.download(self.model_dir))
        files = sorted(
            p for p in local.iterdir() if p.is_file() and p.name.endswith(MODEL_SUFFIXES)
        )
        if not files:
            raise ModelMissingError(local)
        if len(files) > 1:
            raise RuntimeError(f"more than one model file in {local}: {files}; only one is allowed")
        self._model = joblib.load(files[0])
        self.ready = True
        return self.ready

    def predict(
        self, payload: dict[str, Any] | InferRequest, headers: dict[str, str] | None = None
    ) -> Any:
        try:
            instances = get_predict_input(payload)
            wants = os.environ.get(PROBABILITIES_ENV, "false").lower() == "true"
            if wants and hasattr(self._model, "predict_proba"):
                result = self._model.predict_proba(instances)
            else:
                result = self._model.predict(instances)
            return get_predict_response(payload, result, self.name)
        except Exception as err:
            raise InferenceError(str(err)) from err


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_dir", required=True, help="the model's local directory")
    args, _ = parser.parse_known_args()
    model = StoredSklearnModel(args.model_name, args.model_dir)
    model.load()
    kserve.ModelServer().start([model])


if __name__ == "__main__":
    main()
