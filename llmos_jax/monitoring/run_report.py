"""`llmos report`: one self-contained HTML page about one or more training runs.

The page has its plots embedded (matplotlib PNGs as base64 `data:` URLs), so
it can be mailed or attached to a ticket: train and eval loss, learning rate,
gradient norm, tokens/s and MFU, with every alert of `alerts.jsonl` marked on
the curves (a red dashed line at its step; the image's `data-alert-steps`
lists them), then the alerts, the final metrics, the text samples and each
run's `config.gin`. Several runs are overlaid (`--compare`).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import pathlib
from typing import Any, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from llmos_jax.errors import UserError
from llmos_jax.monitoring.alert_delivery import read_alerts
from llmos_jax.monitoring.metrics_history import read_metrics
from llmos_jax.monitoring.metrics_writer import METRICS_FILENAME

# (title, split, metric) per curve of each plot; a plot with no data is left out.
PLOTS = (
    ("Loss", (("train", "loss"), ("eval", "loss"))),
    ("Learning rate", (("train", "learning_rate"),)),
    ("Gradient norm", (("train", "grad_norm"),)),
    ("Tokens per second", (("train", "tokens_per_second"),)),
    ("MFU", (("train", "mfu"),)),
)
REPORT_FILENAME = "report.html"


@dataclasses.dataclass
class RunData:
    """What the report reads from one run folder."""

    name: str
    directory: pathlib.Path
    records: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    config: str

    @classmethod
    def load(cls, directory: str | pathlib.Path) -> RunData:
        path = pathlib.Path(directory)
        if not (path / METRICS_FILENAME).exists():
            raise UserError(f"--model_dir={directory}: no {METRICS_FILENAME} there; point it at "
                            "the folder `llmos train --model_dir` wrote.")
        config = path / "config.gin"
        return cls(name=path.name or str(path), directory=path, records=read_metrics(path),
                   alerts=read_alerts(path),
                   config=config.read_text(encoding="utf-8") if config.exists() else "")

    def series(self, split: str, metric: str) -> tuple[list[int], list[float]]:
        points = [(r["step"], r[metric]) for r in self.records
                  if r.get("split") == split and isinstance(r.get(metric), (int, float))]
        return [p[0] for p in points], [float(p[1]) for p in points]

    def last(self, split: str) -> dict[str, Any]:
        records = [r for r in self.records if r.get("split") == split]
        return records[-1] if records else {}


def _plot(title: str, curves, runs: Sequence[RunData]) -> tuple[str, list[int]] | None:
    """(base64 PNG, alert steps marked) of one plot; None when no run has its metrics."""
    figure = Figure(figsize=(7, 3.2), dpi=90)
    axes = figure.add_subplot()
    drawn = False
    for index, run in enumerate(runs):
        for split, metric in curves:
            steps, values = run.series(split, metric)
            if steps:
                label = f"{run.name} {split}" if len(runs) > 1 else f"{split} {metric}"
                axes.plot(steps, values, label=label, color=f"C{index}",
                          linestyle="-" if split == "train" else "--",
                          marker=None if split == "train" else "o", markersize=3)
                drawn = True
    if not drawn:
        return None
    marked = sorted({int(alert["step"]) for run in runs for alert in run.alerts})
    for index, run in enumerate(runs):
        color = "red" if len(runs) == 1 else f"C{index}"
        for step, rules in sorted(_alerts_by_step(run).items()):
            axes.axvline(step, color=color, linestyle=":", linewidth=1.2)
            axes.annotate(", ".join(rules), xy=(step, 0.98), xycoords=("data", "axes fraction"),
                          rotation=90, fontsize=7, va="top", ha="right", color=color)
    if marked:
        axes.plot([], [], color="red" if len(runs) == 1 else "gray", linestyle=":",
                  label="alert")
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return base64.b64encode(buffer.getvalue()).decode(), marked


def _alerts_by_step(run: RunData) -> dict[int, list[str]]:
    by_step: dict[int, list[str]] = {}
    for alert in run.alerts:
        rules = by_step.setdefault(int(alert["step"]), [])
        if alert["rule"] not in rules:
            rules.append(alert["rule"])
    return by_step


def _table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def render_report(runs: Sequence[RunData]) -> str:
    """The HTML page for `runs` (the first is the main one)."""
    parts = [f"<h1>Training report: {html.escape(', '.join(run.name for run in runs))}</h1>"]
    parts.append("<h2>Curves</h2>")
    for title, curves in PLOTS:
        plotted = _plot(title, curves, runs)
        if plotted is not None:
            image, marked = plotted
            parts.append(f'<figure><img class="plot" alt="{html.escape(title)}" '
                         f'data-alert-steps="{html.escape(json.dumps(marked))}" '
                         f'src="data:image/png;base64,{image}"></figure>')
    parts.append("<h2>Alerts</h2>")
    alert_rows = [[run.name, a["step"], a["rule"], a.get("severity", ""), a["message"]]
                  for run in runs for a in run.alerts]
    parts.append(_table(alert_rows, ["run", "step", "rule", "severity", "message"])
                 .replace("<table>", '<table id="alerts">') if alert_rows
                 else '<p id="alerts">No alert was raised.</p>')
    parts.append("<h2>Final metrics</h2>")
    for run in runs:
        for split in ("train", "eval"):
            last = run.last(split)
            if last:
                rows = [[k, v] for k, v in last.items() if k not in ("split", "time")]
                parts.append(f"<h3>{html.escape(run.name)}: {split}</h3>"
                             + _table(rows, ["metric", "value"]))
    parts.append("<h2>Samples</h2>")
    samples = [(run.name, r["step"], text) for run in runs for r in run.records
               if r.get("split") == "text"
               for key, text in r.items() if key not in ("step", "split", "time", "superseded")]
    parts += [f"<h3>{html.escape(name)}, step {step}</h3><pre class=sample>{html.escape(text)}"
              "</pre>" for name, step, text in samples] or ["<p>No samples.</p>"]
    parts.append("<h2>Config</h2>")
    parts += [f"<details><summary>{html.escape(run.name)}: config.gin</summary><pre>"
              f"{html.escape(run.config)}</pre></details>" for run in runs]
    style = ("body{font-family:sans-serif;max-width:70em;margin:auto}table{border-collapse:"
             "collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
             "pre{background:#f6f6f6;padding:6px;white-space:pre-wrap}")
    return ("<!DOCTYPE html><html><head><meta charset=utf-8><title>llmos report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def write_report(model_dirs: Sequence[str | pathlib.Path],
                 output: str | pathlib.Path | None = None) -> pathlib.Path:
    """Writes the report of `model_dirs` (default `<first>/report.html`); returns its path."""
    runs = [RunData.load(directory) for directory in model_dirs]
    path = pathlib.Path(output) if output else runs[0].directory / REPORT_FILENAME
    path.write_text(render_report(runs), encoding="utf-8")
    return path
