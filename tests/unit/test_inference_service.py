import pytest

from serving.inference_service import (
    MODEL_VERSION_LABEL,
    SKLEARN_RUNTIME,
    PredictorSettings,
    build_inference_service,
    from_dict,
    to_dict,
)


def _settings(**overrides) -> PredictorSettings:
    values = {"name": "breast-cancer", "storage_uri": "s3://models/breast-cancer/2",
              "model_version": 2, **overrides}
    return PredictorSettings(**values)


def test_isvc_names_the_sklearn_runtime_with_v2_protocol() -> None:
    isvc = to_dict(build_inference_service(_settings(canary_traffic_percent=10)))
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    predictor = isvc["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    assert predictor["model"]["modelFormat"] == {"name": "sklearn"}
    assert predictor["model"]["protocolVersion"] == "v2"
    assert predictor["model"]["runtime"] == SKLEARN_RUNTIME == "kserve-sklearnserver"
    assert predictor["model"]["storageUri"] == "s3://models/breast-cancer/2"
    assert isvc["metadata"]["labels"][MODEL_VERSION_LABEL] == "2"


def test_first_deploy_has_no_canary_field() -> None:
    isvc = to_dict(build_inference_service(_settings()))
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]


def test_round_trip_through_the_sdk_classes_keeps_every_field() -> None:
    isvc = to_dict(build_inference_service(_settings(canary_traffic_percent=25,
                                                     service_account="kserve-minio-sa")))
    assert to_dict(from_dict(isvc)) == isvc


@pytest.mark.parametrize("percent", [-1, 101])
def test_canary_percent_outside_0_100_is_refused(percent: int) -> None:
    with pytest.raises(ValueError, match="canary_traffic_percent must be within 0..100"):
        _settings(canary_traffic_percent=percent)


def test_invalid_name_is_refused() -> None:
    with pytest.raises(ValueError, match="'Breast_Cancer' is not a valid InferenceService name"):
        _settings(name="Breast_Cancer")
