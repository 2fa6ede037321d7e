"""Compile the training pipeline to KFP IR YAML, the form the KFP backend runs."""

from __future__ import annotations

from pathlib import Path

COMPILED = Path(__file__).parent / "compiled" / "training_pipeline.yaml"


def compile_to(path: Path = COMPILED) -> Path:
    """Write the pipeline's IR YAML to ``path`` and return it."""
    from kfp import compiler

    from pipelines.training import training_pipeline

    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(training_pipeline, str(path))
    return path
