"""The ``mlops`` command line: run the pipeline, compile and submit it, serve and manage models.

Exit codes: 0 done; 1 an error, in one line on stderr (a bad value, a missing file, an
unreachable endpoint, a failed run); 2 a usage error (click); 3 a rollout rolled back;
130 interrupted; 128 + the signal (130, 143) when a signal stopped ``mlops run``. A closed
stdout (``mlops predict rows.csv | head -1``) ends quietly with 0.
"""

from __future__ import annotations

import os
import sys

import click

from mlops.cli import deployments, pipeline, release, rollout, scoring, serving
from mlops.cli.errors import raised_by_project, refused_message, unreachable_message


def _stdout_closed() -> bool:
    """Whether stdout's reader has gone (``| head``): the pipe reports it, or a flush fails."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)
        if any(events & select.POLLERR for _, events in poller.poll(0)):
            return True
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or no real file
        return False
    return False


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's own final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


# What a command raises for a user's mistake or a failed outside call: one line, no traceback.
_ONE_LINE_ERRORS = (ValueError, LookupError, RuntimeError, OSError)


class _Group(click.Group):
    """A user mistake ends in one clear line and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # here, where a closed pipe can still end quietly
            return result
        except click.UsageError:
            raise  # click prints the usage with it, exit 2
        except click.ClickException as err:
            # The same "error: " line as every other error, for scripts that look for it.
            click.secho(f"error: {err.format_message()}", fg="red", err=True)
            sys.exit(err.exit_code)
        except (click.exceptions.Exit, click.Abort, SystemExit):
            if _stdout_closed():
                _silence_stdout()
            raise
        except KeyboardInterrupt as err:
            # A run stopped by a signal says so and exits 128 + the signal (pipelines.local).
            if str(err):
                click.secho(f"error: {err}", fg="red", err=True)
            sys.exit(getattr(err, "exit_code", 130))
        except BrokenPipeError:
            if not _stdout_closed():
                raise
            _silence_stdout()
            sys.exit(0)
        except Exception as err:
            # An unreachable endpoint or an API's refusal, whichever library reports it; this
            # project's own errors already say which endpoint and what to do.
            line = (
                None
                if raised_by_project(err)
                else unreachable_message(err, _command(ctx)) or refused_message(err)
            )
            if line is None and not isinstance(err, _ONE_LINE_ERRORS):
                raise
            click.secho(f"error: {line or err}", fg="red", err=True)
            sys.exit(1)


def _command(ctx: click.Context) -> str | None:
    """The subcommand that raised (click sets it before invoking the subcommand)."""
    return ctx.invoked_subcommand


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kfp-kserve-sklearn")
def main() -> None:
    """Train, gate, store and serve a scikit-learn model with Kubeflow Pipelines and KServe."""


for _command_module in (
    *pipeline.COMMANDS,
    *deployments.COMMANDS,
    *serving.COMMANDS,
    *rollout.COMMANDS,
    *release.COMMANDS,
    *scoring.COMMANDS,
):
    main.add_command(_command_module)

__all__ = ["main"]
