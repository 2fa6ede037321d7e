"""The HTML report of a training run (issue 17 item 8): self-contained, escaped, readable."""

import re
from html.parser import HTMLParser

from mlops.run_report import render_run_report

SCORES = {"accuracy": 0.97, "balanced_accuracy": 0.5, "f1": 0.49, "f1_macro": 0.49,
          "roc_auc": 0.5}


def _report(**overrides: object) -> str:
    arguments = {
        "model_name": "fraud",
        "mlflow_run_id": "abc123",
        "params": {"estimator": "random_forest", "data_source": "<script>x</script>.csv"},
        "gate_metric": "accuracy",
        "scores": SCORES,
        "champion_scores": None,
        "baseline": (0, {**SCORES}),
        "class_names": ["legit", "<b>fraud</b>"],
        "confusion": [[97, 0], [3, 0]],
        "curves": [("<b>fraud</b>", [0.0, 0.5, 1.0], [0.0, 0.5, 1.0])],
        "deploy": False,
        "reason": "accuracy 0.9700 is no better than always predicting the majority class 0",
    }
    return render_run_report(**{**arguments, **overrides})


def test_the_report_shows_the_decision_the_metrics_the_matrix_and_an_inline_roc_curve() -> None:
    page = _report()
    assert "decision: gated</strong>: accuracy 0.9700 is no better than always predicting" in page
    assert "<td>accuracy (gate)</td><td>0.9700</td><td>0.9700</td>" in page
    assert "<th>always 0</th>" in page
    assert "<th>legit</th>" in page and "<td" in page and ">97</td>" in page
    assert page.count("<svg") == 1 and "<polyline" in page
    HTMLParser().feed(page)  # well-formed enough to parse


def test_the_report_fetches_nothing_and_runs_no_script_whatever_the_data_says() -> None:
    page = _report()
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "<b>fraud</b>" not in page and "&lt;b&gt;fraud&lt;/b&gt;" in page
    assert not re.search(r"(src|href)=", page)


def test_a_report_without_curves_says_why() -> None:
    assert "No ROC curve" in _report(curves=[])
