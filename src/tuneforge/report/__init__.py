"""Run reports: a loss curve, grouped metric bars, and report.md + a self-contained report.html.

Plots use matplotlib's object API (Figure + Agg), so no global backend is switched and no window opens.
DejaVu Sans, matplotlib's bundled font, covers Vietnamese.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import jinja2
from matplotlib.figure import Figure

from tuneforge import __version__
from tuneforge.fileio import write_bytes, write_text

FONT = {"font.family": "DejaVu Sans", "font.size": 10}


# -- numbers and tables ---------------------------------------------------------

def format_value(value) -> str:
    """4 significant digits for floats below 1000, whole numbers above; None -> empty; nested -> JSON."""
    if value is None:
        return ""
    if isinstance(value, bool | int | str):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if abs(value) >= 1000:
            return f"{value:.0f}"
        return f"{value:.4g}"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _columns(rows: Sequence[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _md_cell(value, escape_html: bool) -> str:
    text = format_value(value)
    text = html.escape(text, quote=False) if escape_html else text
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def format_table(rows: Sequence[dict], *, escape_html: bool = False) -> str:
    """A markdown table (columns = union of keys, in first-seen order), padded so it also reads in a terminal.

    escape_html=True turns <, > and & into entities, for markdown that a viewer renders (report.md).
    """
    if not rows:
        return "(no rows)"
    cols = _columns(rows)
    cells = [[_md_cell(r.get(c), escape_html) for c in cols] for r in rows]
    numeric = [all(_is_number(r.get(c)) or r.get(c) is None for r in rows) for c in cols]
    widths = [max(3, len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]

    def line(values, right):
        padded = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, numeric, strict=True)) + "|"
    return "\n".join([line(cols, [False] * len(cols)), rule, *(line(row, numeric) for row in cells)])


# -- plots ----------------------------------------------------------------------

def _save(fig: Figure, path: str | Path) -> Path:
    """Render to memory, then write atomically: a crash never leaves a truncated PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return write_bytes(path, buf.getvalue())


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def loss_scale(losses: Sequence[float]) -> str:
    """'log' when the losses span more than 30×: a steep first drop (a student cut from its teacher starts
    near 35, ends near 0.03) would flatten everything after it on a linear axis."""
    positive = [v for v in losses if v > 0]
    return "log" if positive and max(positive) > 30 * min(positive) else "linear"


def plot_loss(history: Sequence[dict], path: str | Path, title: str = "Training loss") -> Path:
    """Train loss vs step (plus a moving average when long), dev loss points, dev metrics on a right axis."""
    from matplotlib import rc_context

    train = [(r["step"], r["loss"]) for r in history if r.get("loss") is not None and "step" in r]
    dev_loss = [(r["step"], r["dev_loss"]) for r in history if r.get("dev_loss") is not None]
    dev_metrics = sorted({k for r in history for k in r if k.startswith("dev_") and k != "dev_loss"
                          and _is_number(r[k])})
    with rc_context(FONT):
        fig = Figure(figsize=(7.5, 4.2))
        ax = fig.add_subplot()
        if train:
            steps, losses = zip(*train, strict=True)
            ax.plot(steps, losses, color="#4c72b0", alpha=0.35 if len(train) > 50 else 1.0, lw=1,
                    label="train loss")
            if len(train) > 50:
                ax.plot(steps, _moving_average(list(losses), max(5, len(train) // 25)), color="#4c72b0", lw=2,
                        label="train loss (moving average)")
        if dev_loss:
            ax.plot(*zip(*dev_loss, strict=True), "o-", color="#dd8452", ms=5, label="dev loss")
        if not train and not dev_loss:
            ax.text(0.5, 0.5, "no training steps were logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        if loss_scale([v for _, v in train + dev_loss]) == "log":
            ax.set_yscale("log")
            ax.set_ylabel("loss (log scale)")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if dev_metrics:
            right = ax.twinx()
            for i, key in enumerate(dev_metrics):
                pts = [(r["step"], r[key]) for r in history if _is_number(r.get(key))]
                right.plot(*zip(*pts, strict=True), "s--", color=f"C{i + 2}", ms=4, label=key.replace("_", " "))
            right.set_ylabel("dev metric")
            h2, l2 = right.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        if handles:  # below the axes, so it never hides the curve
            ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(len(handles), 3),
                      fontsize=9, frameon=False)
        ax.set_title(title)
        return _save(fig, path)


def plot_metric_bars(table: dict[str, dict[str, float]], path: str | Path, title: str = "Metrics") -> Path:
    """Grouped bars: one group per metric, one bar per arm (e.g. zero-shot, few-shot, LoRA), values on top."""
    from matplotlib import rc_context

    arms = list(table)
    metrics = _columns(list(table.values()))
    values = [v for arm in arms for v in table[arm].values() if _is_number(v)]
    with rc_context(FONT):
        fig = Figure(figsize=(max(5.0, 1.2 + 0.9 * len(metrics) * max(1, len(arms)) ** 0.7), 4.2))
        ax = fig.add_subplot()
        width = 0.8 / max(1, len(arms))
        for i, arm in enumerate(arms):
            xs = [m + (i - (len(arms) - 1) / 2) * width for m in range(len(metrics))]
            ys = [table[arm].get(k) if _is_number(table[arm].get(k)) else math.nan for k in metrics]
            bars = ax.bar(xs, ys, width * 0.92, label=arm, color=f"C{i}")
            ax.bar_label(bars, labels=["" if math.isnan(y) else format_value(float(y)) for y in ys],
                         padding=2, fontsize=8)
        ax.set_xticks(range(len(metrics)), [m.replace("_", " ") for m in metrics])
        if values and min(values) >= 0 and max(values) <= 1:
            ax.set_ylim(0, 1.12)
        else:
            ax.margins(y=0.15)
        ax.axhline(0, color="black", lw=0.6)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        if arms:
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(len(arms), 5), frameon=False)
        ax.set_title(title)
        return _save(fig, path)


# -- report.md and report.html ----------------------------------------------------

_HTML = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True).from_string("""\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font-family: "DejaVu Sans", system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; border-bottom: 2px solid #4c72b0; padding-bottom: .3rem; }
h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #eef2f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.summary th { background: none; font-weight: 600; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption, footer { color: #666; font-size: .85rem; }
td { white-space: pre-wrap; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
{% if summary %}
<table class="summary">
{% for key, value in summary %}
<tr><th>{{ key }}</th><td>{{ value }}</td></tr>
{% endfor %}
</table>
{% endif %}
{% for caption, cols, rows in tables %}
<h2>{{ caption }}</h2>
<table>
<tr>{% for c in cols %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in rows %}
<tr>{% for value, numeric in row %}<td{% if numeric %} class="num"{% endif %}>{{ value }}</td>{% endfor %}</tr>
{% endfor %}
</table>
{% endfor %}
{% for caption, uri in images %}
<figure><img src="{{ uri }}" alt="{{ caption }}"><figcaption>{{ caption }}</figcaption></figure>
{% endfor %}
{% if notes %}
<h2>Notes</h2>
<ul>
{% for note in notes %}
<li>{{ note }}</li>
{% endfor %}
</ul>
{% endif %}
<footer>tuneforge {{ version }} · {{ generated }}</footer>
</body>
</html>
""")


def _data_uri(path: Path) -> str:
    kind = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml",
            ".gif": "image/gif"}.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_table(rows: list[dict]) -> tuple[list[str], list[list[tuple[str, bool]]]]:
    cols = _columns(rows)
    return cols, [[(format_value(r.get(c)), _is_number(r.get(c))) for c in cols] for r in rows]


def write_report(
    run_dir: str | Path,
    *,
    title: str,
    summary: Iterable[tuple[str, str]],
    tables: Iterable[tuple[str, list[dict]]],
    images: Iterable[tuple[str, str | Path]],
    notes: Iterable[str] = (),
) -> tuple[Path, Path]:
    """Write run_dir/report.md (images by relative path) and run_dir/report.html (one file, images inlined)."""
    run_dir = Path(run_dir)
    summary = [(str(k), format_value(v)) for k, v in summary]
    tables = [(str(caption), list(rows)) for caption, rows in tables]
    # An image path is taken as given when it exists (plot_* return such paths), else relative to run_dir.
    images = [(str(caption), Path(p) if Path(p).exists() else run_dir / p) for caption, p in images]
    notes = [str(n) for n in notes]

    md = [f"# {title}", ""]
    if summary:
        md += [format_table([{"": k, "value": v} for k, v in summary], escape_html=True), ""]
    for caption, rows in tables:
        md += [f"## {caption}", "", format_table(rows, escape_html=True), ""]
    for caption, path in images:
        rel = Path(os.path.relpath(path, run_dir)).as_posix()
        md += [f"![{caption}]({rel})", "", f"*{caption}*", ""]
    if notes:
        md += ["## Notes", "", *(f"- {html.escape(n, quote=False)}" for n in notes), ""]

    page = _HTML.render(
        title=title,
        summary=summary,
        tables=[(caption, *_html_table(rows)) for caption, rows in tables],
        images=[(caption, _data_uri(path)) for caption, path in images],
        notes=notes,
        version=__version__,
        generated=_dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    )
    return write_text(run_dir / "report.md", "\n".join(md)), write_text(run_dir / "report.html", page)
