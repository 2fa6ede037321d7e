"""Compile the training and the scoring pipelines to KFP IR YAML, the form the KFP backend runs."""

from __future__ import annotations

from pathlib import Path

COMPILED = Path(__file__).parent / "compiled" / "training_pipeline.yaml"
COMPILED_SCORING = Path(__file__).parent / "compiled" / "scoring_pipeline.yaml"


def compile_to(path: Path = COMPILED) -> Path:
    """Write the training pipeline's IR YAML to ``path`` and return it."""
    from pipelines.training import training_pipeline

    return _compile(training_pipeline, path)


def compile_scoring_to(path: Path = COMPILED_SCORING) -> Path:
    """Write the scoring pipeline's IR YAML to ``path`` and return it."""
    from pipelines.scoring import scoring_pipeline

    return _compile(scoring_pipeline, path)


def _compile(pipeline: object, path: Path) -> Path:
    from kfp import compiler

    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(path))
    return path
