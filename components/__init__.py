"""The pipeline's steps, one KFP v2 component per module, each a thin shell over plain functions."""

from components.check_parameters import check_parameters
from components.deploy_model import deploy_model
from components.evaluate import evaluate
from components.load_data import load_data
from components.rollout import rollout
from components.score import score
from components.train import train
from components.upload_model import upload_model
from components.validate_data import validate_data
from components.write_predictions import write_predictions

__all__ = [
    "check_parameters",
    "deploy_model",
    "evaluate",
    "load_data",
    "rollout",
    "score",
    "train",
    "upload_model",
    "validate_data",
    "write_predictions",
]
