"""The kubernetes deploy target against a thin fake at the ``KServeClient`` boundary."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from serving import kubernetes_target
from serving.deploy import deploy_inference_service, set_canary_traffic
from serving.inference_service import PredictorSettings, to_dict

NS = "kubeflow-user"
NOT_FOUND = (
    "Exception when calling CustomObjectsApi->get_namespaced_custom_object: (404)\n"
    "Reason: Not Found\nHTTP response headers: {}\n"
    'HTTP response body: {"kind":"Status","message":"inferenceservices.serving.kserve.io '
    '\\"breast-cancer\\" not found","reason":"NotFound","code":404}'
)


class FakeKServeClient:
    """Keeps InferenceServices as the API would (dicts with generation) and records calls."""

    def __init__(self, ready: bool = True) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.ready = ready

    def _store(self, isvc: Any, namespace: str, generation: int) -> dict[str, Any]:
        body = to_dict(isvc)
        body["metadata"]["generation"] = generation
        body["metadata"]["resourceVersion"] = str(generation * 10)
        body["status"] = {
            "observedGeneration": generation,
            "conditions": [{"type": "Ready", "status": "True" if self.ready else "False"}],
        }
        if not self.ready:
            body["status"]["conditions"][0].update(
                reason="RevisionFailed", message="Revision failed: model.joblib did not load"
            )
        self.objects[(namespace, body["metadata"]["name"])] = body
        return copy.deepcopy(body)

    def get(self, name: str, namespace: str | None = None, **_: Any) -> dict[str, Any]:
        self.calls.append(("get", name, namespace))
        try:
            return copy.deepcopy(self.objects[(namespace or "default", name)])
        except KeyError:
            raise RuntimeError(NOT_FOUND) from None

    def create(self, isvc: Any, namespace: str | None = None, **_: Any) -> dict[str, Any]:
        self.calls.append(("create", isvc.metadata.name, namespace, to_dict(isvc)))
        return self._store(isvc, namespace or "default", 1)

    def replace(self, name: str, isvc: Any, namespace: str | None = None, **_: Any) -> Any:
        self.calls.append(("replace", name, namespace, to_dict(isvc)))
        current = self.objects[(namespace or "default", name)]
        return self._store(isvc, namespace or "default", current["metadata"]["generation"] + 1)

    def wait_isvc_ready(self, name: str, namespace: str | None = None, **kwargs: Any) -> None:
        self.calls.append(("wait", name, namespace, kwargs))
        if not self.ready:
            raise RuntimeError(f"Timeout to start the InferenceService {name}. (a long dump)")

    def delete(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - must not happen
        raise AssertionError("the kubernetes target must never delete an InferenceService")

    def writes(self) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] in ("create", "replace")]

    def waits(self) -> list[dict[str, Any]]:
        return [c[3] for c in self.calls if c[0] == "wait"]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeKServeClient:
    client = FakeKServeClient()
    monkeypatch.setattr(kubernetes_target, "_client", lambda: client)
    return client


def _settings(version: int, percent: int | None = 10) -> PredictorSettings:
    return PredictorSettings(
        name="breast-cancer",
        namespace=NS,
        storage_uri=f"s3://models/breast-cancer/{version}",
        model_version=version,
        canary_traffic_percent=percent,
        service_account="kserve-minio-sa",
    )


def _predictor(body: dict[str, Any]) -> dict[str, Any]:
    return dict(body["spec"]["predictor"])


def _deploy(version: int, tmp_path: Path) -> dict[str, Any]:
    return deploy_inference_service(_settings(version), "kubernetes", tmp_path, timeout_s=30)


def test_first_deploy_creates_the_inference_service_without_a_canary(
    fake: FakeKServeClient, tmp_path: Path
) -> None:
    applied = _deploy(1, tmp_path)

    (write,) = fake.writes()
    assert write[0] == "create"
    assert "canaryTrafficPercent" not in _predictor(write[3])
    assert _predictor(write[3])["serviceAccountName"] == "kserve-minio-sa"
    assert applied["metadata"]["generation"] == 1


def test_second_deploy_replaces_it_with_a_canary_at_the_set_percent(
    fake: FakeKServeClient, tmp_path: Path
) -> None:
    _deploy(1, tmp_path)
    _deploy(2, tmp_path)

    kind, name, namespace, body = fake.writes()[-1]
    assert (kind, name, namespace) == ("replace", "breast-cancer", NS)
    assert _predictor(body)["canaryTrafficPercent"] == 10
    assert _predictor(body)["model"]["storageUri"] == "s3://models/breast-cancer/2"


def test_every_write_waits_for_the_generation_the_api_returned(
    fake: FakeKServeClient, tmp_path: Path
) -> None:
    _deploy(1, tmp_path)
    _deploy(2, tmp_path)
    kubernetes_target.set_canary_percent("breast-cancer", NS, None, timeout_s=30)

    waits = fake.waits()
    assert [w["expected_generation"] for w in waits] == [1, 2, 3]
    assert all(w["timeout_seconds"] == 30 for w in waits)


def test_promote_removes_the_canary_field(fake: FakeKServeClient, tmp_path: Path) -> None:
    _deploy(1, tmp_path)
    _deploy(2, tmp_path)

    set_canary_traffic("breast-cancer", None, "kubernetes", state_dir=tmp_path, namespace=NS)

    kind, _, _, body = fake.writes()[-1]
    assert kind == "replace"
    assert "canaryTrafficPercent" not in _predictor(body)
    assert "status" not in body
    assert _predictor(body)["model"]["storageUri"] == "s3://models/breast-cancer/2"


def test_rollback_sets_the_canary_to_zero(fake: FakeKServeClient, tmp_path: Path) -> None:
    _deploy(1, tmp_path)
    _deploy(2, tmp_path)

    set_canary_traffic("breast-cancer", 0, "kubernetes", state_dir=tmp_path, namespace=NS)

    assert _predictor(fake.writes()[-1][3])["canaryTrafficPercent"] == 0


def test_a_revision_that_never_becomes_ready_fails_with_its_reason_and_deletes_nothing(
    fake: FakeKServeClient, tmp_path: Path
) -> None:
    _deploy(1, tmp_path)
    fake.ready = False

    with pytest.raises(RuntimeError, match=r"breast-cancer generation 2 was not Ready") as info:
        _deploy(2, tmp_path)

    assert "model.joblib did not load" in str(info.value)
    assert "long dump" not in str(info.value)


def test_get_of_a_missing_inference_service_names_it(fake: FakeKServeClient) -> None:
    with pytest.raises(LookupError, match=r"'breast-cancer' not found in namespace 'kubeflow-user"):
        kubernetes_target.get("breast-cancer", NS)
    assert kubernetes_target.exists("breast-cancer", NS) is False


def test_an_api_refusal_becomes_one_line_with_the_servers_message(
    fake: FakeKServeClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def forbidden(*_: Any, **__: Any) -> None:
        raise RuntimeError(
            "Exception when calling CustomObjectsApi->create_namespaced_custom_object: (403)\n"
            "Reason: Forbidden\nHTTP response body: "
            '{"message":"inferenceservices is forbidden: User \\"system:serviceaccount:'
            'kubeflow:pipeline-runner\\" cannot create resource","code":403}'
        )

    monkeypatch.setattr(fake, "create", forbidden)
    with pytest.raises(RuntimeError) as info:
        _deploy(1, tmp_path)
    message = str(info.value)
    assert message.startswith("could not create InferenceService kubeflow-user/breast-cancer")
    assert 'User "system:serviceaccount:kubeflow:pipeline-runner" cannot create' in message
    assert "\n" not in message


def test_a_canary_percent_outside_the_range_is_refused_before_any_call(
    fake: FakeKServeClient,
) -> None:
    with pytest.raises(ValueError, match="within 0..100"):
        kubernetes_target.set_canary_percent("breast-cancer", NS, 101, timeout_s=30)
    assert fake.calls == []
