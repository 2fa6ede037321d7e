"""The ``mlops`` command line: run the pipeline, compile and submit it, serve and manage models."""

from __future__ import annotations

import sys

import click

from mlops.cli import deployments, pipeline, release, rollout, scoring, serving


class _Group(click.Group):
    """A user mistake ends in one clear line and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt as err:
            # A run stopped by a signal says so and exits 128 + the signal (pipelines.local).
            if str(err):
                click.secho(f"error: {err}", fg="red", err=True)
            sys.exit(getattr(err, "exit_code", 130))
        except (ValueError, LookupError, RuntimeError, OSError) as err:
            click.secho(f"error: {err}", fg="red", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kfp-kserve-sklearn")
def main() -> None:
    """Train, gate, store and serve a scikit-learn model with Kubeflow Pipelines and KServe."""


for _command in (
    *pipeline.COMMANDS,
    *deployments.COMMANDS,
    *serving.COMMANDS,
    *rollout.COMMANDS,
    *release.COMMANDS,
    *scoring.COMMANDS,
):
    main.add_command(_command)

__all__ = ["main"]
