"""The pipeline's rollout step as compiled: its parameters are checked by the first step, before
anything is deployed, and reach the step unchanged (what `mlops submit --rollout-steps` sets)."""

from __future__ import annotations

import pytest
import yaml

from pipelines.compile import COMPILED

ROLLOUT_PARAMETERS = ("rollout_steps", "rollout_interval_s", "rollout_min_requests")


@pytest.fixture(scope="module")
def documents() -> list[dict]:
    return list(yaml.safe_load_all(COMPILED.read_text()))


def _upstream(tasks: dict, name: str) -> set[str]:
    """Every task ``name`` waits for: its dependencies and the producers of its inputs."""
    task = tasks[name]
    direct = set(task.get("dependentTasks", []))
    for kind in ("parameters", "artifacts"):
        for source in task.get("inputs", {}).get(kind, {}).values():
            output = source.get("taskOutputParameter") or source.get("taskOutputArtifact") or {}
            if output:
                direct.add(output["producerTask"])
    return direct.union(*(_upstream(tasks, d) for d in direct))


def test_the_first_step_checks_the_rollout_parameters_of_the_run(documents: list[dict]) -> None:
    inputs = documents[0]["root"]["dag"]["tasks"]["check-parameters"]["inputs"]["parameters"]
    for name in ROLLOUT_PARAMETERS:
        assert inputs[name] == {"componentInputParameter": name}


def test_nothing_runs_before_the_check_so_nothing_is_deployed_with_bad_steps(
    documents: list[dict],
) -> None:
    tasks = documents[0]["root"]["dag"]["tasks"]
    assert set(tasks) > {"check-parameters", "load-data", "condition-1"}
    for name in set(tasks) - {"check-parameters"}:
        assert "check-parameters" in _upstream(tasks, name), name
    # The deploy and the rollout step sit inside condition-1, downstream of the check.
    inner = documents[0]["components"]["comp-condition-1"]["dag"]["tasks"]
    assert {"deploy-model", "condition-2"} <= set(inner)


def test_the_rollout_step_gets_the_same_parameters_the_check_passed(
    documents: list[dict],
) -> None:
    spec = documents[0]
    outer = spec["root"]["dag"]["tasks"]["condition-1"]["inputs"]["parameters"]
    middle = spec["components"]["comp-condition-1"]["dag"]["tasks"]["condition-2"]
    step = spec["components"]["comp-condition-2"]["dag"]["tasks"]["rollout"]
    for name in ROLLOUT_PARAMETERS:
        channel = f"pipelinechannel--{name}"
        assert outer[channel] == {"componentInputParameter": name}
        assert middle["inputs"]["parameters"][channel] == {"componentInputParameter": channel}
        assert step["inputs"]["parameters"][name] == {"componentInputParameter": channel}
    assert step["componentRef"]["name"] == "comp-rollout"


def test_the_rollout_step_reads_the_store_secret_like_the_deploy(documents: list[dict]) -> None:
    executors = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-rollout"]["secretAsEnv"] == executors["exec-deploy-model"]["secretAsEnv"]
