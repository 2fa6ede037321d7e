"""The release workflow, offline: started by hand, approved in `production`, runs `mlops release`.

The checks every workflow gets (it parses, has timeouts, calls existing make targets, pins its
actions) are in test_cluster_workflows.py, which reads every file of .github/workflows.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mlops.environments import load_environments

ROOT = Path(__file__).parents[2]
WORKFLOW = ROOT / ".github/workflows/release.yaml"


def _workflow() -> dict[str, Any]:
    return dict(yaml.safe_load(WORKFLOW.read_text()))


def _run_scripts(workflow: dict[str, Any]) -> str:
    return "\n".join(
        step.get("run", "") for job in workflow["jobs"].values() for step in job["steps"]
    )


def test_it_is_started_only_by_hand_with_the_version_as_a_required_input() -> None:
    triggers = _workflow()[True]  # YAML 1.1 reads the key `on` as True
    assert set(triggers) == {"workflow_dispatch"}
    assert triggers["workflow_dispatch"]["inputs"]["version"]["required"] is True


def test_the_release_job_waits_for_the_production_environments_reviewers() -> None:
    jobs = _workflow()["jobs"]
    assert [job.get("environment") for job in jobs.values()] == ["production"]


def test_it_releases_the_input_version_from_dev_to_prod_with_the_cluster_environments() -> None:
    workflow = _workflow()
    job = workflow["jobs"]["release"]
    assert job["env"]["VERSION"] == "${{ inputs.version }}"
    assert job["env"]["MLOPS_ENVIRONMENTS"] == "environments.cluster.yaml"
    script = _run_scripts(workflow)
    assert '.venv/bin/mlops release "$VERSION" --from dev --to prod' in script
    assert "KUBECONFIG_B64" in script


def test_inputs_and_secrets_never_are_pasted_into_a_script() -> None:
    # ${{ }} inside `run:` is substituted before the shell parses it: a crafted input would run.
    assert "${{" not in _run_scripts(_workflow())


def test_every_port_forward_matches_an_environment_of_the_committed_file() -> None:
    workflow = _workflow()
    envs = load_environments(ROOT / workflow["jobs"]["release"]["env"]["MLOPS_ENVIRONMENTS"])
    forwards = {
        (namespace, service): int(local)
        for namespace, service, local in re.findall(
            r"^\s*forward (\S+) (\S+) (\d+) \d+$", _run_scripts(workflow), re.MULTILINE
        )
    }
    for env in envs.values():
        assert env.s3_endpoint is not None
        assert forwards[(env.namespace, "minio")] == int(env.s3_endpoint.rsplit(":", 1)[1])
        assert forwards[(env.namespace, "mlflow")] == int(env.tracking_uri.rsplit(":", 1)[1])


def test_every_secret_an_environment_names_is_passed_to_the_release_step() -> None:
    workflow = _workflow()
    steps = workflow["jobs"]["release"]["steps"]
    step = next(s for s in steps if "mlops release" in s.get("run", ""))
    envs = load_environments(ROOT / "environments.cluster.yaml")
    needed = set()
    for env in envs.values():
        needed |= {
            env.signing_key_env,
            f"{env.s3_credentials_prefix}AWS_ACCESS_KEY_ID",
            f"{env.s3_credentials_prefix}AWS_SECRET_ACCESS_KEY",
        }
    assert needed <= set(step["env"])
    assert all(step["env"][name] == f"${{{{ secrets.{name} }}}}" for name in needed)


def test_every_script_is_valid_bash() -> None:
    import subprocess

    for job in _workflow()["jobs"].values():
        for step in job["steps"]:
            if "run" in step:
                checked = subprocess.run(
                    ["bash", "-n"], input=step["run"], capture_output=True, text=True, timeout=10
                )
                assert checked.returncode == 0, (step["name"], checked.stderr)


def test_only_main_may_run_the_production_job() -> None:
    (job,) = _workflow()["jobs"].values()
    assert job["environment"] == "production"
    assert job["if"] == "github.ref == 'refs/heads/main'"
    # The environment's own deployment-branch rule is a repository setting: the README says it.
    readme = (ROOT / "README.md").read_text()
    assert "**Deployment branches and tags** allow only `main`" in readme


def test_the_preflight_asks_only_namespaced_questions() -> None:
    (job,) = _workflow()["jobs"].values()
    step = next(s for s in job["steps"] if "KUBECONFIG_B64" in s.get("run", ""))
    kubectl_lines = [
        line.strip() for line in step["run"].splitlines() if ".venv/bin/kubectl" in line
    ]
    assert kubectl_lines
    for line in kubectl_lines:
        # A cluster-scoped read (namespaces, nodes...) needs a ClusterRole the release lacks.
        assert re.search(r" -n \S+", line), line
        assert not re.search(r"\bnamespaces?\b", line.split(" -n ", 1)[0]), line
