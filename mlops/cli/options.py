"""Options every command spells the same way: the model name.

``--model-name`` everywhere; ``--name`` (the old spelling of serve, predict and drift) is kept as
a hidden alias, and the commands that took a positional NAME (get, promote, rollback, rollout)
still take it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from mlops.settings import DEFAULT_MODEL_NAME

MODEL_NAME_HELP = (
    "Model name: the InferenceService, the store folder and the registered model. "
    f"[default: {DEFAULT_MODEL_NAME}]"
)


def resolve_model_name(*given: str | None) -> str:
    """The one model name among the spellings a user gave, else the default.

    Raises:
        click.UsageError: When two spellings name different models.
    """
    names = {name for name in given if name is not None}
    if len(names) > 1:
        raise click.UsageError(
            f"the model name is given twice, as {' and '.join(sorted(map(repr, names)))}: "
            "give it once, with --model-name"
        )
    return names.pop() if names else DEFAULT_MODEL_NAME


def model_name_option(positional: bool = False) -> Callable[[Any], Any]:
    """``--model-name`` (and the hidden ``--name``; with ``positional``, an optional NAME too).

    The command receives one keyword, ``model_name``.
    """

    def decorate(func: Any) -> Any:
        @functools.wraps(func)
        def command(
            *args: Any,
            model_name: str | None = None,
            name_alias: str | None = None,
            name_argument: str | None = None,
            **kwargs: Any,
        ) -> Any:
            resolved = resolve_model_name(model_name, name_alias, name_argument)
            return func(*args, model_name=resolved, **kwargs)

        command = click.option("--name", "name_alias", default=None, hidden=True)(command)
        command = click.option("--model-name", default=None, help=MODEL_NAME_HELP)(command)
        if positional:
            command = click.argument("name_argument", metavar="[NAME]", required=False)(command)
        return command

    return decorate
