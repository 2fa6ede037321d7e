"""Train, gate, store and serve a scikit-learn model with Kubeflow Pipelines and KServe."""

__version__ = "0.1.0"
