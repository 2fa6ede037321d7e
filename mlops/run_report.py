"""The HTML report of one training run: metrics, confusion matrix, ROC curves, the gate's decision.

One self-contained page (inline CSS and SVG, no script, nothing fetched), written by the
evaluate step as its ``Output[HTML]`` (the KFP UI shows it) and copied by ``mlops run`` under
the state directory. Every value from the data (class names, parameters) is escaped.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

# The plot's side in pixels, and its margin for the axes' labels.
_SIZE, _MARGIN = 320, 40
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")
# A curve with more points than this is thinned for the page (the shape stays).
_MAX_POINTS = 400
# Beyond this many classes the confusion matrix is too wide to read: the first ones are shown.
_MAX_MATRIX_CLASSES = 30


def _number(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def _metrics_table(
    gate_metric: str,
    scores: dict[str, float],
    champion: dict[str, float] | None,
    baseline: tuple[Any, dict[str, float]] | None,
) -> str:
    head = "<tr><th>metric</th><th>this model</th>"
    head += "<th>champion</th>" if champion else ""
    head += (f"<th>always {escape(repr(baseline[0]))}</th>" if baseline else "") + "</tr>"
    rows = []
    for key, value in scores.items():
        if key == "f1":  # the same as f1_macro, kept under its old name for MLflow
            continue
        cells = f"<td>{_number(value)}</td>"
        if champion:
            cells += f"<td>{_number(champion.get(key, math.nan))}</td>"
        if baseline:
            cells += f"<td>{_number(baseline[1].get(key, math.nan))}</td>"
        mark = ' class="gate"' if key == gate_metric else ""
        label = f"{escape(key)}{' (gate)' if key == gate_metric else ''}"
        rows.append(f"<tr{mark}><td>{label}</td>{cells}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _confusion_table(class_names: list[str], matrix: list[list[int]]) -> str:
    shown = class_names[:_MAX_MATRIX_CLASSES]
    note = (
        f"<p>The first {_MAX_MATRIX_CLASSES} of {len(class_names)} classes.</p>"
        if len(class_names) > _MAX_MATRIX_CLASSES
        else ""
    )
    head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{escape(n)}</th>" for n in shown)
    rows = []
    for name, counts in zip(shown, matrix, strict=False):
        total = sum(counts) or 1
        cells = "".join(
            f'<td style="background:rgba(31,119,180,{count / total:.2f})">{count}</td>'
            for count in counts[: len(shown)]
        )
        rows.append(f"<tr><th>{escape(name)}</th>{cells}</tr>")
    return f'{note}<table class="matrix">{head}</tr>{"".join(rows)}</table>'


def _thin(xs: list[float], ys: list[float]) -> list[tuple[float, float]]:
    points = list(zip(xs, ys, strict=True))
    if len(points) <= _MAX_POINTS:
        return points
    step = len(points) / _MAX_POINTS
    return [points[int(i * step)] for i in range(_MAX_POINTS)] + [points[-1]]


def roc_svg(curves: list[tuple[str, list[float], list[float]]]) -> str:
    """The ROC curves as one inline SVG (false positive rate across, true positive rate up)."""
    inner = _SIZE - 2 * _MARGIN

    def at(x: float, y: float) -> str:
        return f"{_MARGIN + x * inner:.1f},{_SIZE - _MARGIN - y * inner:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_SIZE}" height="{_SIZE}" '
        f'viewBox="0 0 {_SIZE} {_SIZE}" role="img" aria-label="ROC curve">',
        f'<rect x="{_MARGIN}" y="{_MARGIN}" width="{inner}" height="{inner}" fill="none" '
        'stroke="#999"/>',
        f'<polyline points="{at(0, 0)} {at(1, 1)}" fill="none" stroke="#bbb" '
        'stroke-dasharray="4 4"/>',
        f'<text x="{_SIZE / 2}" y="{_SIZE - 8}" text-anchor="middle" font-size="12">'
        "false positive rate</text>",
        f'<text x="12" y="{_SIZE / 2}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 12 {_SIZE / 2})">true positive rate</text>',
    ]
    for index, (name, fpr, tpr) in enumerate(curves):
        colour = _COLOURS[index % len(_COLOURS)]
        points = " ".join(at(x, y) for x, y in _thin(fpr, tpr))
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2">'
            f"<title>{escape(name)}</title></polyline>"
        )
        parts.append(
            f'<text x="{_MARGIN + inner - 4}" y="{_SIZE - _MARGIN - 8 - 14 * index}" '
            f'text-anchor="end" font-size="12" fill="{colour}">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def render_run_report(
    *,
    model_name: str,
    mlflow_run_id: str,
    params: dict[str, Any],
    gate_metric: str,
    scores: dict[str, float],
    champion_scores: dict[str, float] | None,
    baseline: tuple[Any, dict[str, float]] | None,
    class_names: list[str],
    confusion: list[list[int]],
    curves: list[tuple[str, list[float], list[float]]],
    deploy: bool,
    reason: str,
) -> str:
    """The report page as one HTML string.

    Args:
        model_name: The registered model.
        mlflow_run_id: The MLflow run of this training.
        params: How the model was trained (shown as a table).
        gate_metric: The metric the gate judged by (highlighted).
        scores: Holdout metrics of this model.
        champion_scores: The champion's on the same rows, or ``None``.
        baseline: ``(majority class, metrics)`` of always predicting it, or ``None``.
        class_names: A display name per class, in the matrix's order.
        confusion: The confusion matrix (rows: true class, columns: predicted).
        curves: ``(class name, fpr, tpr)`` per ROC curve.
        deploy: The gate's decision.
        reason: Why.
    """
    verdict = "deploy" if deploy else "gated"
    roc = (
        roc_svg(curves)
        if curves
        else "<p>No ROC curve: the holdout does not hold both sides of any class.</p>"
    )
    settings = "".join(
        f"<tr><td>{escape(str(k))}</td><td>{escape(str(v))}</td></tr>"
        for k, v in sorted(params.items())
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{escape(model_name)}: training run {escape(mlflow_run_id)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 60em; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f4f4f4; }}
tr.gate td {{ font-weight: bold; }}
.decision {{ padding: 0.6em 1em; border-radius: 4px; font-size: 1.1em; }}
.deploy {{ background: #e6f4e6; border: 1px solid #2ca02c; }}
.gated {{ background: #fff4e0; border: 1px solid #ff7f0e; }}
</style></head><body>
<h1>{escape(model_name)}: training run</h1>
<p>MLflow run <code>{escape(mlflow_run_id)}</code></p>
<p class="decision {verdict}"><strong>decision: {verdict}</strong>: {escape(reason)}</p>
<h2>Holdout metrics</h2>
{_metrics_table(gate_metric, scores, champion_scores, baseline)}
<h2>Confusion matrix</h2>
{_confusion_table(class_names, confusion)}
<h2>ROC curve</h2>
{roc}
<h2>Parameters</h2>
<table>{settings}</table>
</body></html>
"""
