"""Step 4 (KFP shell): score challenger and champion, decide (``mlops.evaluation``)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components._image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def evaluate(
    model: Input[Model],
    holdout: Input[Dataset],
    label_column: str,
    model_name: str,
    gate_metric: str,
    min_score: float,
    max_degradation: float,
    tracking_uri: str,
    deploy_target: str,
    namespace: str,
    state_dir: str,
    data_source: str,
    data_fingerprint: str,
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    report: Output[HTML],
) -> NamedTuple("Outputs", Output=bool, reason=str, mlflow_run_id=str):  # type: ignore[valid-type]  # noqa: UP014, E501
    """Score challenger and champion on the holdout, log the run to MLflow, decide.

    Args:
        model: The challenger.
        holdout: Rows neither model was trained on (same split for both).
        label_column: The class label column.
        model_name: Registered model whose ``champion`` alias is production.
        gate_metric: The holdout metric the gate judges by (``mlops.parameters.GATE_METRICS``).
        min_score: Its absolute floor; the model must also beat the majority class.
        max_degradation: Allowed drop of ``gate_metric`` against the champion.
        tracking_uri: MLflow tracking URI.
        deploy_target: ``local`` or ``kubernetes``: where the production model is deployed.
        namespace: Its namespace (kubernetes target).
        state_dir: The local state directory (local target).
        data_source: Where the data came from (logged).
        data_fingerprint: sha256 of the data (logged).
        metrics: Scalar metrics for the KFP UI.
        classification: Confusion matrix (class names) and ROC curve for the KFP UI.
        report: The run's HTML report: metrics, confusion matrix, ROC curves, the decision.

    Returns:
        ``Output``: whether to deploy (the gate); ``reason``; the MLflow run id. The decision
        is named ``Output`` because kfp.local's condition evaluator resolves only task outputs
        of that name, and silently takes the false branch for others (kubeflow/pipelines#13313).
    """
    import json
    import tempfile
    from collections import namedtuple
    from pathlib import Path

    import joblib
    import pandas as pd

    from mlops import registry
    from mlops.evaluation import (
        check_champion,
        classification_curves,
        decide_deployment,
        incompatible_champion,
        majority_baseline,
        roc_curves,
        score_classifier,
    )
    from mlops.run_report import render_run_report
    from mlops.store import fetch_version
    from mlops.training import model_input, types_of
    from serving.deploy import deployed_versions

    rows = pd.read_parquet(holdout.path)
    feature_names = list(model.metadata.get("feature_names", []))
    schema = json.loads(model.metadata.get("schema") or "{}")
    types = types_of({**schema, "feature_names": feature_names})
    features = model_input(rows, types)
    labels = rows[label_column].to_numpy()
    challenger = joblib.load(model.path)
    scores = score_classifier(challenger, features, labels)
    baseline = majority_baseline(labels)

    # The deployed InferenceService is the truth; the alias must agree with it (before anything
    # is logged to MLflow: a refused gate writes nothing).
    serving = deployed_versions(
        model_name, deploy_target, state_dir=Path(state_dir), namespace=namespace
    )
    champion = registry.version_of_alias(tracking_uri, model_name, registry.CHAMPION)
    check_champion(
        model_name,
        deployed=serving.stable if serving else None,
        is_deployed=serving is not None,
        champion=str(champion[0]) if champion else None,
    )
    champion_uri = champion[1] if champion else None

    champion_scores, mismatch = None, None
    if champion_uri:
        with tempfile.TemporaryDirectory() as tmp:
            champion_path, champion_meta = fetch_version(champion_uri, Path(tmp))
            mismatch = incompatible_champion(
                champion_meta.get("feature_names", []),
                feature_names,
                types_of(champion_meta),
                types,
            )
            if mismatch is None:
                champion_model = joblib.load(champion_path)
                champion_scores = score_classifier(champion_model, features, labels)
    decision = mismatch or decide_deployment(
        scores, champion_scores, min_score, max_degradation, gate_metric, baseline
    )

    for key, value in scores.items():
        metrics.log_metric(key, value)
    for key, value in (champion_scores or {}).items():
        metrics.log_metric(f"champion_{key}", value)
    class_names = schema.get("class_names")
    names, matrix, roc = classification_curves(challenger, features, labels, class_names)
    classification.log_confusion_matrix(names, matrix)
    if roc is not None:
        classification.log_roc_curve(*roc)

    params = {**model.metadata.get("params", {}), "data_source": data_source}
    baseline_scores = {f"baseline_{k}": v for k, v in baseline[1].items() if k != "f1"}
    run_id = registry.log_training_run(
        tracking_uri,
        experiment=model_name,
        params={**params, "data_fingerprint": data_fingerprint, "gate_metric": gate_metric},
        metrics={
            **scores,
            **{f"champion_{k}": v for k, v in (champion_scores or {}).items()},
            **baseline_scores,
        },
        model_path=Path(model.path),
        tags={"deploy": str(decision.deploy), "reason": decision.reason},
    )
    page = render_run_report(
        model_name=model_name,
        mlflow_run_id=run_id,
        params=params,
        gate_metric=gate_metric,
        scores=scores,
        champion_scores=champion_scores,
        baseline=baseline,
        class_names=names,
        confusion=matrix,
        curves=roc_curves(challenger, features, labels, class_names),
        deploy=decision.deploy,
        reason=decision.reason,
    )
    with open(report.path, "w") as out:
        out.write(page)
    print(f"decision: deploy={decision.deploy} ({decision.reason})")
    Outputs = namedtuple("Outputs", ["Output", "reason", "mlflow_run_id"])  # noqa: N806
    return Outputs(decision.deploy, decision.reason, run_id)
