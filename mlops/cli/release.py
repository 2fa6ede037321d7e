"""``mlops release VERSION --from dev --to prod``: copy a gated version to another environment."""

from __future__ import annotations

from pathlib import Path

import click

from mlops.cli.errors import unreachable_message
from mlops.cli.options import model_name_option


@click.command()
@click.argument("version", type=click.IntRange(min=1))
@click.option("--from", "source", default="dev", show_default=True, help="Source environment.")
@click.option("--to", "destination", default="prod", show_default=True, help="Destination.")
@model_name_option()
@click.option(
    "--environments",
    "environments_path",
    type=click.Path(path_type=Path),
    default=None,
    help="The environments file [default: MLOPS_ENVIRONMENTS, else ./environments.yaml, else "
    "the local default: dev = .mlops/, prod = .mlops/prod/].",
)
def release(
    version: int, source: str, destination: str, model_name: str, environments_path: Path | None
) -> None:
    """Release VERSION of the model from one environment to another, as a new version there.

    Checks the version's signature and sha256, that it passed the source's gate and that the
    source's rollout promoted it (or it serves all of the source's traffic; a rolled-back
    version is refused), claims it once in the destination's store, copies it there as a new
    version (sha256 checked again there, lineage recorded), registers it in the destination's
    MLflow and deploys it there as a canary. A version is released once.
    """
    from mlops.environments import environment

    # The environments first: a wrong name or file fails before MLflow is even imported.
    source_env = environment(source, environments_path)
    destination_env = environment(destination, environments_path)
    from mlflow.exceptions import MlflowException

    from mlops.release import release_version

    click.echo(
        f"releasing {model_name} version {version}: {source_env.name} ({source_env.store}) -> "
        f"{destination_env.name} ({destination_env.store}, {destination_env.target})"
    )
    try:
        done = release_version(model_name, version, source_env, destination_env)
    except MlflowException as err:
        # MLflow's errors are not ValueErrors: one line, not a traceback.
        unreachable = unreachable_message(err, "release")
        raise click.ClickException(unreachable or f"MLflow refused: {err.message}") from err
    click.echo(f"gate:       {done.lineage['source_gate_reason']}")
    click.echo(f"rollout:    {done.lineage['source_rollout']}")
    click.echo(f"sha256:     {done.sha256} (checked in {done.source} and {done.destination})")
    click.echo(f"version:    {done.destination} version {done.version} at {done.storage_uri}")
    click.echo(f"registered: MLflow version {done.mlflow_version} ({destination_env.tracking_uri})")
    canary = f", canary: version {done.canary}" if done.canary else ""
    click.echo(f"serving:    champion: version {done.stable}{canary}")


COMMANDS = [release]
