"""``mlops score``: score a table in batch with the champion or a chosen version (kfp.local)."""

from __future__ import annotations

import click

from mlops.cli.options import model_name_option
from mlops.settings import state_dir


@click.command(name="score")
@click.argument("source", metavar="INPUT")
@click.option(
    "-o",
    "--output",
    required=True,
    help="A new .csv or .parquet file, or s3://bucket/key.(csv|parquet); never overwritten.",
)
@click.option(
    "--version",
    default=0,
    type=click.IntRange(0),
    help="Store version to score with. [default: the champion]",
)
@model_name_option()
@click.option(
    "--id-column",
    default="",
    help="An input column copied beside each prediction. [default: the row number, `row`]",
)
@click.option(
    "--chunk-rows",
    default=100_000,
    show_default=True,
    type=click.IntRange(1),
    help="Rows held in memory at a time.",
)
@click.option("-v", "--verbose", is_flag=True, help="Show every step's output.")
def score(source: str, verbose: bool, **arguments: object) -> None:
    """Score INPUT (a CSV/Parquet path or s3://bucket/key) in chunks through kfp.local.

    Every output row has the row number (or --id-column), the predicted class, one
    probability_<class> column per class and the model version. A missing column, text in a
    numeric column, or an empty cell the model cannot impute (it was trained on a table without
    gaps) stops the run with the column and the row; nothing is written.
    """
    from pipelines.scoring import score_locally

    summary = score_locally({"source": source, **arguments}, state_dir(), verbose=verbose)
    click.echo(
        f"scored {summary.rows} rows with {arguments['model_name']} version "
        f"{summary.model_version}: {summary.output}"
    )
    click.echo(f"step logs: {summary.log_file}")


COMMANDS = [score]
