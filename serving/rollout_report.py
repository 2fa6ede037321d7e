"""The rollout as a page a person would rather look at than read: one plot per signal.

A self-contained HTML file (inline SVG, no script, nothing fetched: it opens offline) with the
outcome and its reason, one small chart per signal (the value at each judged window, the
threshold as a dashed line, failing points in red), and the table of every window's figures.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path

from serving.rollout import RolloutPlan, RolloutResult

_W, _H, _PAD = 360, 160, 34
_COLOURS = {True: "#2e7d32", False: "#c62828", None: "#9e9e9e"}
_BOUND = {
    "error_rate": "max",
    "p99_latency": "max",
    "class_divergence": "max",
    "probability_divergence": "max",
    "input_drift": "max",
    "shadow_agreement": "min",
}


def signal_chart(name: str, result: RolloutResult) -> str:
    """One inline SVG: ``name``'s value per judged window, with its threshold."""
    points = [(r, next(s for s in r.verdict.signals if s.name == name)) for r in result.steps]
    threshold = points[0][1].threshold if points else 0.0
    values = [s.value for _, s in points if s.value is not None and s.value != float("inf")]
    top = max([threshold, *values]) * 1.15 or 1.0
    width = _W - 2 * _PAD
    step_x = width / max(len(points) - 1, 1)

    def y(value: float) -> float:
        return _H - _PAD - (min(value, top) / top) * (_H - 2 * _PAD)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'role="img" aria-label="{html.escape(name)} per step">',
        f'<text x="{_PAD}" y="16" font-size="13" font-weight="bold">{html.escape(name)}</text>',
        f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" stroke="#555"/>',
        f'<line x1="{_PAD}" y1="{_PAD}" x2="{_PAD}" y2="{_H - _PAD}" stroke="#555"/>',
        f'<line x1="{_PAD}" y1="{y(threshold):.1f}" x2="{_W - _PAD}" y2="{y(threshold):.1f}" '
        'stroke="#ef6c00" stroke-dasharray="5,4"/>',
        f'<text x="{_W - _PAD}" y="{y(threshold) - 4:.1f}" font-size="10" text-anchor="end" '
        f'fill="#ef6c00">{_BOUND.get(name, "bound")} {threshold:g}</text>',
        f'<text x="4" y="{_PAD + 4}" font-size="10">{top:.3g}</text>',
        f'<text x="4" y="{_H - _PAD}" font-size="10">0</text>',
    ]
    line, marks = [], []
    for index, (record, signal) in enumerate(points):
        x = _PAD + index * step_x if len(points) > 1 else _PAD + width / 2
        label = f"{record.step}%" + (f" #{record.attempt}" if record.attempt > 1 else "")
        marks.append(
            f'<text x="{x:.1f}" y="{_H - _PAD + 14}" font-size="10" '
            f'text-anchor="middle">{html.escape(label)}</text>'
        )
        if signal.value is None:
            marks.append(
                f'<text x="{x:.1f}" y="{_H - _PAD - 4}" font-size="10" text-anchor="middle" '
                'fill="#9e9e9e">n/a</text>'
            )
            continue
        shown = min(signal.value, top)
        line.append(f"{x:.1f},{y(shown):.1f}")
        marks.append(
            f'<circle cx="{x:.1f}" cy="{y(shown):.1f}" r="4" fill="{_COLOURS[signal.passed]}">'
            f"<title>{html.escape(signal.detail)}</title></circle>"
        )
    if len(line) > 1:
        parts.append(f'<polyline points="{" ".join(line)}" fill="none" stroke="#90a4ae"/>')
    parts += [*marks, "</svg>"]
    return "".join(parts)


def render(result: RolloutResult, plan: RolloutPlan) -> str:
    """The whole HTML page of a rollout."""
    names = [s.name for s in result.steps[0].verdict.signals] if result.steps else []
    colour = "#2e7d32" if result.outcome == "promoted" else "#c62828"
    rows = "".join(
        "<tr>"
        f"<td>{r.step}%</td><td>{r.attempt}</td><td>{r.verdict.canary_requests:.0f}</td>"
        f"<td>{r.verdict.stable_requests:.0f}</td>"
        + "".join(
            f'<td style="color:{_COLOURS[s.passed]}" title="{html.escape(s.detail)}">'
            f"{'n/a' if s.value is None else f'{s.value:.3f}'}</td>"
            for s in r.verdict.signals
        )
        + f"<td><b>{html.escape(r.verdict.decision)}</b></td></tr>"
        for r in result.steps
    )
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    charts = "".join(signal_chart(n, result) for n in names)
    pair = result.pair
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Rollout of version {html.escape(pair.canary_version)}: {html.escape(result.outcome)}</title>
<style>body{{font-family:sans-serif;margin:2em}}svg{{margin:4px;border:1px solid #ddd}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
</style></head><body>
<h1 style="color:{colour}">{html.escape(result.outcome)}: canary version
{html.escape(pair.canary_version)} against stable version {html.escape(pair.stable_version)}</h1>
<p>{html.escape(result.reason)}</p>
<p>Steps {list(plan.steps)}, {plan.interval_s:g} s windows, judged on at least
{plan.thresholds.min_requests} canary requests. Revisions: stable {html.escape(pair.stable)},
canary {html.escape(pair.canary)}. Red points failed their bound (dashed); grey: not judged.</p>
<div>{charts}</div>
<table><tr><th>step</th><th>window</th><th>canary req</th><th>stable req</th>{head}
<th>decision</th></tr>{rows}</table>
</body></html>
"""


def write_report(result: RolloutResult, plan: RolloutPlan, directory: Path) -> Path:
    """Write the page under ``directory`` (``.mlops/rollouts/``); return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = directory / f"{stamp}-v{result.pair.canary_version}-{result.outcome}.html"
    path.write_text(render(result, plan))
    return path
