"""The batch scoring pipeline: load (the training pipeline's step) -> score -> write predictions.

``score_locally`` runs it with ``kfp.local`` as ``mlops run`` runs the training pipeline: each
step a subprocess of this interpreter, the failing step's own error line as the message.
"""

import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from kfp import dsl

from components import load_data, score, write_predictions
from mlops.scoring import CHUNK_ROWS
from mlops.settings import DEFAULT_MODEL_NAME, default_store_uri, default_tracking_uri
from pipelines.training import (
    CLUSTER_S3_SECRET,
    CLUSTER_STORE_URI,
    CLUSTER_TRACKING_URI,
    _s3_secret_as_env,
)

PIPELINE_NAME = "batch-score-sklearn"


@dsl.pipeline(name=PIPELINE_NAME, description=__doc__)
def scoring_pipeline(
    source: str,
    output: str,
    version: int = 0,
    model_name: str = DEFAULT_MODEL_NAME,
    id_column: str = "",
    chunk_rows: int = CHUNK_ROWS,
    store_uri: str = CLUSTER_STORE_URI,
    tracking_uri: str = CLUSTER_TRACKING_URI,
    s3_credentials_secret: str = CLUSTER_S3_SECRET,
) -> NamedTuple("Outputs", rows=int, model_version=int, output=str):  # type: ignore[valid-type]  # noqa: UP014, E501
    """Score a table with the champion (``version`` 0) or a chosen version; write a new file."""
    # Not cached: the input file and the champion change under the same arguments.
    loaded = load_data(source=source).set_caching_options(False)
    _s3_secret_as_env(loaded, s3_credentials_secret)
    scored = score(
        dataset=loaded.outputs["dataset"],
        model_name=model_name,
        version=version,
        store_uri=store_uri,
        tracking_uri=tracking_uri,
        output=output,
        id_column=id_column,
        chunk_rows=chunk_rows,
    ).set_caching_options(False)
    _s3_secret_as_env(scored, s3_credentials_secret)
    written = write_predictions(
        predictions=scored.outputs["predictions"], output=output
    ).set_caching_options(False)
    _s3_secret_as_env(written, s3_credentials_secret)
    Outputs = NamedTuple("Outputs", [("rows", int), ("model_version", int), ("output", str)])  # noqa: N806, UP014, E501
    return Outputs(
        rows=scored.outputs["rows"],
        model_version=scored.outputs["model_version"],
        output=written.output,
    )


@dataclass
class ScoringSummary:
    """What a local scoring run did."""

    rows: int
    model_version: int
    output: str
    log_file: Path


def preflight(arguments: dict[str, Any]) -> int:
    """Check the input, the output and the model version before any step runs.

    Returns:
        The version to score with (the champion's number when ``version`` is 0).

    Raises:
        FileNotFoundError, ValueError, StoreError: For the input (``mlops.data.check_source``)
            or the output (``mlops.scoring.check_output``).
        FileExistsError: When the output exists.
        LookupError: When no version to score with exists.
    """
    from mlops.data import check_source
    from mlops.scoring import check_output, model_storage_uri
    from mlops.store import open_store, split_version_uri

    check_source(str(arguments["source"]))
    check_output(str(arguments["output"]))
    storage_uri = model_storage_uri(
        str(arguments["model_name"]),
        int(arguments["version"]),
        str(arguments["store_uri"]),
        str(arguments["tracking_uri"]),
    )
    store_uri, model_name, version = split_version_uri(storage_uri)
    open_store(store_uri).read_metadata(model_name, version)  # the version exists
    return version


def score_locally(
    arguments: dict[str, Any], state_dir: Path, *, verbose: bool = False
) -> ScoringSummary:
    """Run the scoring pipeline with ``kfp.local``; the local store and MLflow by default.

    The steps' artifacts (a Parquet copy of the input, the predictions) go to a temporary
    pipeline root under ``state_dir`` that is removed afterwards: only ``output`` stays.

    Raises:
        PipelineRunError: When a step fails, with that step's error line.
        FileNotFoundError, FileExistsError, ValueError, LookupError, StoreError: From
            ``preflight``, before anything is written.
    """
    from kfp import local

    from pipelines.local import PipelineRunError, _captured_steps

    arguments = {
        "store_uri": default_store_uri(),
        "tracking_uri": default_tracking_uri(),
        "model_name": DEFAULT_MODEL_NAME,
        "version": 0,
        **arguments,
    }
    if not str(arguments["output"]).startswith("s3://"):
        # The steps may run elsewhere than here: they get an absolute path.
        output = Path(str(arguments["output"]).removeprefix("file://"))
        arguments["output"] = str(output.absolute())
    # The champion is looked up once, here: the steps score the version this check found, even
    # if a promote moves the alias meanwhile, and the score step need not start MLflow.
    arguments["version"] = preflight(arguments)
    state_dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="scoring-", dir=state_dir))
    log_file = state_dir / "logs" / "last-score.log"
    try:
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
        with warnings.catch_warnings(), _captured_steps(log_file, verbose) as tee:
            # kfp warns when an image name lacks "python"; ours is the project image.
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                outputs = scoring_pipeline(**arguments).outputs
            except RuntimeError as err:
                raise PipelineRunError(tee.error_line or f"{err} (see {log_file})") from err
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return ScoringSummary(
        rows=int(outputs["rows"]),
        model_version=int(outputs["model_version"]),
        output=str(outputs["output"]),
        log_file=log_file,
    )
