"""The simulation's report: a plot of quality over the synthetic calendar, and an HTML page.

The plot shows, per matured day, the PR-AUC of the model driftline served, of the first
champion never retrained and of the oracle retrained every day; the drift onset, the days
the monitor said drift, and every retrain with its outcome (promoted, rejected, inconclusive,
skipped, failed). Files are written whole or not at all (``files.write_atomic``).
"""

from __future__ import annotations

import html
import io
from datetime import date
from pathlib import Path
from typing import Any

from driftline.files import write_atomic

SERIES = (
    ("driftline", "driftline (champion that day)", "#1f77b4"),
    ("first_champion", "first champion, never retrained", "#d62728"),
    ("oracle", "oracle, retrained every day", "#7f7f7f"),
)


def plot_svg(result: dict[str, Any], title: str) -> str:
    """Quality over time with drift verdicts, retrains, promotions and rejections, as SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    days = result["days"]
    when = [date.fromisoformat(d["day"]) for d in days]
    figure, axis = plt.subplots(figsize=(10, 4.6), dpi=100)
    for key, label, color in SERIES:
        points = [
            (w, d["quality"][key])
            for w, d in zip(when, days, strict=True)
            if d["quality"] and d["quality"].get(key) is not None
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            style = "--" if key == "oracle" else "-"
            axis.plot(xs, ys, style, color=color, label=label, marker="o", markersize=3)
    onset = result["summary"].get("drift_onset")
    if onset:
        start = date.fromisoformat(onset)
        axis.axvspan(start, when[-1], color="#ffdd99", alpha=0.25, label="drift scenario")
    drift_days = [
        w for w, d in zip(when, days, strict=True) if (d["drift"] or {}).get("verdict") == "drift"
    ]
    if drift_days:
        axis.scatter(
            drift_days,
            [1.04] * len(drift_days),
            marker="v",
            color="#ff7f0e",
            label="drift verdict",
            clip_on=False,
        )
    marks = {
        "promoted": ("*", "#2ca02c", 1.10),
        "rejected": ("x", "#d62728", 1.10),
        "inconclusive": ("o", "#9467bd", 1.10),
        "skipped": ("|", "#999999", 1.10),
        "failed": ("X", "black", 1.10),
    }
    for outcome, (marker, color, height) in marks.items():
        xs = [
            w
            for w, d in zip(when, days, strict=True)
            for r in d["retrains"]
            if r["outcome"] == outcome
        ]
        if xs:
            axis.scatter(
                xs,
                [height] * len(xs),
                marker=marker,
                color=color,
                s=60,
                label=f"retrain {outcome}",
                clip_on=False,
            )
    axis.set_ylim(0, 1.0)
    axis.set_ylabel("PR-AUC on the day's labeled rows")
    axis.set_title(title, fontsize=11, pad=34)  # above the verdict and retrain marks
    axis.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d"))
    axis.grid(alpha=0.3)
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=4, fontsize=8, frameon=False)
    figure.tight_layout()
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    plt.close(figure)
    return buffer.getvalue()


def _summary_rows(summary: dict[str, Any]) -> str:
    means = summary["post_drift_mean_pr_auc"]
    rows = [
        ("drift onset", summary["drift_onset"] or "none"),
        ("days to detect", summary.get("days_to_detect")),
        ("days to recover", summary.get("days_to_recover")),
        ("mean PR-AUC after onset: driftline", means["driftline"]),
        ("mean PR-AUC after onset: never retrained", means["first_champion"]),
        ("mean PR-AUC after onset: oracle", means["oracle"]),
        ("matured days after onset", summary["post_drift_matured_days"]),
        ("drift verdicts", summary["drift_verdicts"]),
        ("retrains (trained and decided)", summary["retrains"]),
        ("promotions", summary["promotions"]),
        ("rejections", summary["rejections"]),
        ("inconclusive (no fair comparison yet)", summary.get("inconclusive", 0)),
        ("skipped by the cooldown", summary["skipped_by_cooldown"]),
        ("failed retrains", summary["failed_retrains"]),
    ]
    return "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )


def _day_rows(days: list[dict[str, Any]]) -> str:
    lines = []
    for d in days:
        q = d["quality"] or {}
        cells = [
            d["day"],
            d["scenario"],
            f"v{d['champion_serving']}",
            (d["drift"] or {}).get("verdict", d["monitor"]),
            "; ".join(
                f"{r['trigger']}: {r['outcome']}"
                + (f" v{r['challenger_version']}" if r.get("challenger_version") else "")
                for r in d["retrains"]
            ),
            *(f"{q[k]:.3f}" if q.get(k) is not None else "" for k, _, _ in SERIES),
        ]
        title = html.escape(" | ".join(r for x in d["retrains"] for r in x["reasons"]))
        lines.append(
            f'<tr title="{title}">'
            + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
            + "</tr>"
        )
    return "".join(lines)


def _section(result: dict[str, Any], heading: str) -> str:
    svg = plot_svg(result, heading)
    return (
        f"<h2>{html.escape(heading)}</h2>{svg}"
        f"<table>{_summary_rows(result['summary'])}</table>"
        "<h3>Day by day</h3><table><tr><th>day</th><th>scenario</th><th>served by</th>"
        "<th>drift</th><th>retrains</th><th>driftline</th><th>never retrained</th>"
        f"<th>oracle</th></tr>{_day_rows(result['days'])}</table>"
    )


FIGURE_LABELS = {
    "drift_verdicts": "drift verdicts",
    "days_to_detect": "days to detect",
    "retrains": "retrains (trained and decided)",
    "promotions": "promotions",
    "rejections": "rejections",
    "inconclusive": "inconclusive (no fair comparison yet)",
    "skipped_by_cooldown": "skipped by the cooldown",
    "failed_retrains": "failed retrains",
    "days_to_recover": "days to recover",
    "post_drift_mean_pr_auc_driftline": "mean PR-AUC after onset: driftline",
    "post_drift_mean_pr_auc_first_champion": "mean PR-AUC after onset: never retrained",
    "post_drift_mean_pr_auc_oracle": "mean PR-AUC after onset: oracle",
    "post_drift_mean_pr_auc_gain_over_never_retrained": "driftline minus never retrained",
}


def _cells(*values: Any, header: bool = False) -> str:
    tag = "th" if header else "td"
    return "<tr>" + "".join(f"<{tag}>{html.escape(str(v))}</{tag}>" for v in values) + "</tr>"


def _comparison(comparison: dict[str, Any]) -> str:
    """Spec A against spec B: what the second spec changes, then every figure side by side
    with the difference (each spec's own baselines: its first champion and oracle are
    trained with its own windows)."""
    first, second = comparison["specs"]
    parts = [f"<h2>Spec A ({html.escape(first)}) against spec B ({html.escape(second)})</h2>"]
    changes = comparison.get("spec_changes")
    if changes is not None:
        parts.append("<h3>What spec B changes</h3><table>")
        parts.append(_cells("spec value", "A", "B", header=True))
        parts += [_cells(key, a, b) for key, (a, b) in changes.items()]
        if not changes:
            parts.append(_cells("(the two specs are the same)", "", ""))
        parts.append("</table>")
    side = comparison.get("side_by_side") or {}
    difference = comparison["second_minus_first"]
    parts.append("<h3>What it does</h3><table>")
    parts.append(_cells("figure", "A", "B", "B minus A", header=True))
    for key, diff in difference.items():
        a, b = side.get(key, ["", ""])
        parts.append(
            _cells(FIGURE_LABELS.get(key, key), a, b, "" if isinstance(diff, list) else diff)
        )
    parts.append("</table>")
    return "".join(parts)


def write_report(result: dict[str, Any], out: Path) -> list[Path]:
    """``report.html`` and the plot(s) in ``out``; returns the paths written."""
    timeline = result["timeline"]
    runs = result.get("runs") or [result]
    written = []
    sections = []
    for index, run in enumerate(runs):
        heading = f"{timeline['name']}" + (f" — spec {run['spec']}" if run.get("spec") else "")
        sections.append(_section(run, heading))
        name = "quality.svg" if len(runs) == 1 else f"quality_{index + 1}.svg"
        written.append(write_atomic(out / name, plot_svg(run, heading)))
    comparison = _comparison(result["comparison"]) if result.get("comparison") else ""
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>driftline simulate: {html.escape(timeline['name'])}</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:2px 8px;text-align:left;font-size:13px}</style></head><body>"
        f"<h1>driftline simulate: {html.escape(timeline['name'])}</h1>"
        f"<p>{html.escape(timeline.get('description') or '')}</p>"
        f"{comparison}{''.join(sections)}"
        "<h3>Definitions</h3><ul>"
        + "".join(
            f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
            for k, v in runs[0].get("definitions", {}).items()
        )
        + "</ul></body></html>"
    )
    written.append(write_atomic(out / "report.html", page))
    return written
