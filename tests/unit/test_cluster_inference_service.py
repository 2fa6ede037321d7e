"""The InferenceService the deploy step applies in the cluster survives the kserve SDK's classes.

``serving.kubernetes_target`` reads the API's dict back into ``V1beta1InferenceService`` to
promote or roll back, then ``replace``s it: a field the typed classes dropped would be removed
from the cluster. So the round trip must keep every field, of the object as built and as the
API returns it (server metadata, Knative traffic status).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from serving.inference_service import PredictorSettings, build_inference_service, from_dict, to_dict


def _cluster_isvc(percent: int | None) -> dict[str, Any]:
    """What deploy_model builds with the pipeline's cluster defaults (`mlops submit`)."""
    from mlops.cli.pipeline import submit
    from mlops.settings import DEFAULT_MODEL_NAME
    from pipelines import training

    defaults = {p.name: p.default for p in submit.params}
    settings = PredictorSettings(
        name=DEFAULT_MODEL_NAME,
        namespace=defaults["namespace"],
        storage_uri=f"{training.CLUSTER_STORE_URI}/{DEFAULT_MODEL_NAME}/3",
        model_version=3,
        canary_traffic_percent=percent,
        service_account=defaults["service_account"],
    )
    return to_dict(build_inference_service(settings))


@pytest.mark.parametrize("percent", [None, 0, 10, 100])
def test_the_built_inference_service_round_trips_without_losing_a_field(
    percent: int | None,
) -> None:
    isvc = _cluster_isvc(percent)
    assert to_dict(from_dict(to_dict(from_dict(isvc)))) == isvc
    predictor = isvc["spec"]["predictor"]
    assert predictor["serviceAccountName"] == "kserve-minio-sa"
    assert predictor["model"]["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    assert predictor["model"]["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}
    assert ("canaryTrafficPercent" in predictor) is (percent is not None)


def test_the_inference_service_as_the_api_returns_it_round_trips_too() -> None:
    isvc = _cluster_isvc(10)
    returned = copy.deepcopy(isvc)
    returned["metadata"].update(
        creationTimestamp="2026-11-23T12:00:00Z",
        generation=2,
        resourceVersion="4711",
        uid="5d1c0e8e-1b7a-4f3e-9d55-0c7c2a1e9f00",
    )
    returned["status"] = {
        "observedGeneration": 2,
        "url": "http://breast-cancer.kubeflow-user.example.com",
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-23T12:01:00Z"}
        ],
        "components": {
            "predictor": {
                "latestCreatedRevision": "breast-cancer-predictor-00002",
                "latestReadyRevision": "breast-cancer-predictor-00002",
                "latestRolledoutRevision": "breast-cancer-predictor-00001",
                "previousRolledoutRevision": "breast-cancer-predictor-00001",
                "traffic": [
                    {
                        "latestRevision": True,
                        "percent": 10,
                        "revisionName": "breast-cancer-predictor-00002",
                        "tag": "latest",
                        "url": "http://latest-breast-cancer-predictor.kubeflow-user.example.com",
                    },
                    {
                        "latestRevision": False,
                        "percent": 90,
                        "revisionName": "breast-cancer-predictor-00001",
                        "tag": "prev",
                        "url": "http://prev-breast-cancer-predictor.kubeflow-user.example.com",
                    },
                ],
            }
        },
    }
    again = to_dict(from_dict(returned))
    assert again["spec"] == isvc["spec"]
    assert again["metadata"]["labels"] == isvc["metadata"]["labels"]
    assert again["metadata"]["annotations"] == isvc["metadata"]["annotations"]
    assert again["metadata"]["resourceVersion"] == "4711"
    assert (
        again["status"]["components"]["predictor"]["traffic"]
        == (returned["status"]["components"]["predictor"]["traffic"])
    )
