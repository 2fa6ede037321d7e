"""The committed IR YAML is what the code compiles to, and it says what the design says."""

from pathlib import Path

import pytest
import yaml

from pipelines.compile import COMPILED, COMPILED_SCORING, compile_scoring_to, compile_to


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = compile_to(tmp_path_factory.mktemp("ir") / "pipeline.yaml")
    # The IR is two YAML documents once a step has Kubernetes platform config (the S3 Secret):
    # the pipeline spec, then the platform spec.
    documents = list(yaml.safe_load_all(path.read_text()))
    return {"text": path.read_text(), "spec": documents[0], "platform": documents[1:]}


def test_committed_yaml_is_not_stale(fresh: dict) -> None:
    # Compared as data: the header comment renders dict defaults in protobuf map order,
    # which differs between processes.
    committed = list(yaml.safe_load_all(COMPILED.read_text()))
    assert committed == [fresh["spec"], *fresh["platform"]], (
        "stale: run `mlops compile` and commit pipelines/compiled/training_pipeline.yaml"
    )


def test_deploy_steps_are_gated_on_the_evaluation(fresh: dict) -> None:
    tasks = fresh["spec"]["root"]["dag"]["tasks"]
    gate = tasks["condition-1"]
    assert "pipelinechannel--evaluate-Output" in gate["triggerPolicy"]["condition"]
    inner = fresh["spec"]["components"]["comp-condition-1"]["dag"]["tasks"]
    assert set(inner) == {"upload-model", "deploy-model", "condition-2"}


def test_the_rollout_step_runs_after_the_deploy_only_when_steps_are_given(fresh: dict) -> None:
    inner = fresh["spec"]["components"]["comp-condition-1"]["dag"]["tasks"]
    condition = inner["condition-2"]["triggerPolicy"]["condition"]
    assert "pipelinechannel--rollout_steps" in condition and "!= ''" in condition
    assert inner["condition-2"]["dependentTasks"] == ["deploy-model"]
    steps = fresh["spec"]["components"]["comp-condition-2"]["dag"]["tasks"]
    assert steps["rollout"]["cachingOptions"].get("enableCache") is not True
    outputs = fresh["spec"]["components"]["comp-rollout"]["outputDefinitions"]["artifacts"]
    assert outputs["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    defaults = fresh["spec"]["root"]["inputDefinitions"]["parameters"]
    assert defaults["rollout_steps"]["defaultValue"] == ""  # manual unless asked


def test_outside_world_steps_are_not_cached_and_no_step_is_retried_by_kfp(fresh: dict) -> None:
    tasks = fresh["spec"]["root"]["dag"]["tasks"]
    inner = fresh["spec"]["components"]["comp-condition-1"]["dag"]["tasks"]
    for task in (tasks["load-data"], tasks["evaluate"], inner["upload-model"],
                 inner["deploy-model"]):
        assert task["cachingOptions"].get("enableCache") is not True
    assert tasks["train"]["cachingOptions"]["enableCache"] is True
    # KFP retries on any failure (an empty CSV, a rejected deploy); the clients retry
    # transient faults only.
    for task in [*tasks.values(), *inner.values()]:
        assert "retryPolicy" not in task


def test_parameters_are_checked_before_any_other_step(fresh: dict) -> None:
    tasks = fresh["spec"]["root"]["dag"]["tasks"]
    assert "dependentTasks" not in tasks["check-parameters"]
    assert tasks["load-data"]["dependentTasks"] == ["check-parameters"]
    # Every other step reads load_data's output, so it runs after the check too.
    checked = set(tasks["check-parameters"]["inputs"]["parameters"])
    assert {"model_name", "canary_traffic_percent", "hyperparameters", "test_size"} <= checked


def test_the_predictor_uses_the_service_account_with_the_s3_secret(fresh: dict) -> None:
    parameters = fresh["spec"]["root"]["inputDefinitions"]["parameters"]
    assert parameters["service_account"]["defaultValue"] == "kserve-minio-sa"
    manifests = Path(__file__).parents[2] / "manifests"
    assert any("kserve-minio-sa" in p.read_text() for p in manifests.rglob("*.yaml"))


def test_every_step_runs_the_project_image_without_installing(fresh: dict) -> None:
    executors = fresh["spec"]["deploymentSpec"]["executors"].values()
    assert {e["container"]["image"] for e in executors} == {"localhost/kfp-kserve-sklearn:0.1.0"}
    assert "pip install" not in fresh["text"]


def test_compiled_path_is_under_pipelines() -> None:
    assert COMPILED == Path(__file__).parents[2] / "pipelines/compiled/training_pipeline.yaml"


@pytest.fixture(scope="module")
def fresh_scoring(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = compile_scoring_to(tmp_path_factory.mktemp("ir") / "scoring.yaml")
    documents = list(yaml.safe_load_all(path.read_text()))
    return {"text": path.read_text(), "spec": documents[0], "platform": documents[1:]}


def test_committed_scoring_yaml_is_not_stale(fresh_scoring: dict) -> None:
    committed = list(yaml.safe_load_all(COMPILED_SCORING.read_text()))
    assert committed == [fresh_scoring["spec"], *fresh_scoring["platform"]], (
        "stale: run `mlops compile` and commit pipelines/compiled/scoring_pipeline.yaml"
    )
    assert COMPILED_SCORING == COMPILED.parent / "scoring_pipeline.yaml"


def test_scoring_loads_with_the_training_pipelines_own_load_step(
    fresh: dict, fresh_scoring: dict
) -> None:
    tasks = fresh_scoring["spec"]["root"]["dag"]["tasks"]
    assert set(tasks) == {"load-data", "score", "write-predictions"}
    assert tasks["score"]["dependentTasks"] == ["load-data"]
    assert tasks["write-predictions"]["dependentTasks"] == ["score"]
    executors = [f["spec"]["deploymentSpec"]["executors"]["exec-load-data"]
                 for f in (fresh, fresh_scoring)]
    assert executors[0] == executors[1]
    for task in tasks.values():
        assert task["cachingOptions"].get("enableCache") is not True
        assert "retryPolicy" not in task


def test_every_scoring_step_runs_the_project_image_with_the_s3_secret(fresh_scoring: dict) -> None:
    executors = fresh_scoring["spec"]["deploymentSpec"]["executors"].values()
    assert {e["container"]["image"] for e in executors} == {"localhost/kfp-kserve-sklearn:0.1.0"}
    assert "pip install" not in fresh_scoring["text"]
    platform = fresh_scoring["platform"][0]["platforms"]["kubernetes"]["deploymentSpec"]
    assert set(platform["executors"]) == set(fresh_scoring["spec"]["deploymentSpec"]["executors"])
