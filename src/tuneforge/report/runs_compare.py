"""`tuneforge runs compare A B ...`: what differs between runs' configs, their metrics side by side, one chart
(training loss curves overlaid, and each run's primary metric before and after). Reads only the run folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.report.runs_table import Run, human_seconds, is_run_folder, read_folder, run_folders

ABSENT = "(absent)"
LABEL_KEYS = ("name", "strategy", "stage")  # a list of sections is keyed by these (eval.probes[chat].limit)
SKIP_METRICS = ("detail", "prompting")  # repeats of before/after, and another run's numbers


def find_run(root: Path, name: str) -> Path:
    """A run named in `root`, or a run folder's own path."""
    for folder in (Path(name), root / name):
        if folder.is_dir() and is_run_folder(folder):
            return folder
    there = [p.relative_to(root).as_posix() for p in run_folders(root)] if root.is_dir() else []
    listed = f"runs in {root}: {', '.join(there[:12])}{' ...' if len(there) > 12 else ''}" if there \
        else f"{root} holds no run folders"
    raise UserError(f"run '{name}' not found: no run folder {root / name} ({listed}); "
                    "name a run in --dir, or pass a run folder's path")


def sections(items) -> dict | None:
    """A list of sections keyed by each one's name (eval.probes[chat]) or else its index; None if not sections."""
    if not isinstance(items, list) or not items or not all(isinstance(x, dict) for x in items):
        return None
    labels = [next((str(x[k]) for k in LABEL_KEYS if isinstance(x.get(k), str)), None) for x in items]
    if None in labels or len(set(labels)) < len(labels):
        labels = [str(i) for i in range(len(items))]
    return dict(zip(labels, items, strict=True))


def flatten(obj, prefix: str = "") -> dict:
    """Nested sections as dotted keys; a list of sections by each one's name (probes[chat].limit) or index."""
    out: dict = {}
    if isinstance(obj, dict) and obj:
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    elif sections(obj) is not None:
        for label, item in sections(obj).items():
            out.update(flatten(item, f"{prefix}[{label}]"))
    else:
        out[prefix] = obj
    return out


def _same(values: list) -> bool:
    first = json.dumps(values[0], sort_keys=True, default=str)
    return all(json.dumps(v, sort_keys=True, default=str) == first for v in values[1:])


def _shown(value, width: int = 60) -> str:
    if value is ABSENT:
        return ABSENT
    from tuneforge.report import format_value

    text = "null" if value is None else format_value(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def differences(values: list, key: str = "") -> list[tuple[str, list]]:
    """(dotted key, each run's value) where the runs differ; a section one run lacks is one row, not a row per key."""
    if _same(values):
        return []
    if all(isinstance(v, dict) for v in values):
        keys = list(dict.fromkeys(k for v in values for k in v))
        return [d for k in keys for d in differences([v.get(k, ABSENT) for v in values], f"{key}.{k}" if key else k)]
    keyed = [sections(v) for v in values]
    if all(k is not None for k in keyed):
        labels = list(dict.fromkeys(label for k in keyed for label in k))
        return [d for label in labels for d in differences([k.get(label, ABSENT) for k in keyed], f"{key}[{label}]")]
    return [(key, values)]


def config_differences(runs: list[Run], labels: list[str]) -> list[dict]:
    """One row per dotted config key whose value is not the same in every run."""
    return [{"config key": key, **{label: _shown(v) for label, v in zip(labels, values, strict=True)}}
            for key, values in differences([r.config for r in runs])]


def _numeric(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def metric_rows(runs: list[Run], labels: list[str]) -> list[dict]:
    """The listing's columns, then every number in each run's metrics.json (dotted keys), side by side."""
    summary = {
        "verb": [r.verb for r in runs], "task": [r.task for r in runs], "model": [r.model for r in runs],
        "method": [r.method for r in runs], "status": [r.status for r in runs], "metric": [r.metric for r in runs],
        "before": [r.before for r in runs], "after": [r.after for r in runs],
        "tokens/s": [r.tokens_s for r in runs], "time": [human_seconds(r.time) for r in runs],
    }
    flat = [{k: v for k, v in flatten({k: v for k, v in (r.metrics or {}).items() if k not in SKIP_METRICS}).items()
             if _numeric(v)} for r in runs]
    rows = [{"": key, **dict(zip(labels, values, strict=True))} for key, values in summary.items()]
    for key in dict.fromkeys(k for f in flat for k in f):
        rows.append({"": key, **{label: f.get(key) for label, f in zip(labels, flat, strict=True)}})
    return rows


def loss_history(folder: Path) -> list[tuple[int, float]]:
    """(step, loss) from metrics.jsonl; a continual run's stages one after another."""
    logs = [folder / "metrics.jsonl"] if (folder / "metrics.jsonl").is_file() else sorted(
        (folder / "stages").glob("*/metrics.jsonl"), key=lambda p: int(p.parent.name.split("-")[0])
        if p.parent.name.split("-")[0].isdigit() else 0)
    points: list[tuple[int, float]] = []
    for log in logs:
        offset = points[-1][0] if points else 0
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and _numeric(row.get("loss")) and isinstance(row.get("step"), int):
                points.append((row["step"] + offset, float(row["loss"])))
    return points


def plot_runs(runs: list[Run], labels: list[str], path: Path) -> Path:
    """Left: each run's training loss by step. Right: each run's primary metric before (light) and after."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    from tuneforge.report import FONT, _save, format_value, loss_scale

    with rc_context(FONT):
        fig = Figure(figsize=(11.5, 4.4))
        loss_ax, bar_ax = fig.subplots(1, 2)
        losses: list[float] = []
        for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
            points = loss_history(run.path)
            if points:
                steps, values = zip(*points, strict=True)
                loss_ax.plot(steps, values, "o-" if len(points) < 20 else "-", color=f"C{i}", lw=1.2, ms=3,
                             label=label)
                losses += values
        if losses:
            loss_ax.legend(fontsize=8, frameon=False)
            if loss_scale(losses) == "log":
                loss_ax.set_yscale("log")
        else:
            loss_ax.text(0.5, 0.5, "no training loss logged", ha="center", va="center", transform=loss_ax.transAxes)
        loss_ax.set(xlabel="step", ylabel="loss", title="Training loss")
        loss_ax.grid(alpha=0.3)

        metrics = {r.metric for r in runs if r.metric}
        for i, run in enumerate(runs):
            for offset, value, alpha, name in ((-0.2, run.before, 0.45, "before"), (0.2, run.after, 1.0, "after")):
                if value is None:
                    continue
                bars = bar_ax.bar([i + offset], [value], 0.38, color=f"C{i}", alpha=alpha)
                bar_ax.bar_label(bars, labels=[f"{name}\n{format_value(float(value))}"], padding=2, fontsize=8)
        ticks = labels if len(metrics) <= 1 else [f"{label}\n({r.metric})" for label, r in zip(labels, runs, strict=True)]
        bar_ax.set_xticks(range(len(runs)), ticks, rotation=15 if len(runs) > 3 else 0)
        bar_ax.margins(y=0.2)
        bar_ax.grid(axis="y", alpha=0.3)
        bar_ax.set_axisbelow(True)
        bar_ax.set_title(f"{metrics.pop() if len(metrics) == 1 else 'primary metric'}: before (light) and after")
        return _save(fig, path)


def compare_runs(root: Path, names: list[str], out: Path) -> str:
    from tuneforge.report import format_table

    if len(names) < 2:
        raise UserError("runs compare: name two or more runs, e.g. `tuneforge runs compare ab-old ab-new`")
    folders = [find_run(root, name) for name in names]
    runs = [read_folder(folder) for folder in folders]
    labels = list(dict.fromkeys(names)) if len(set(names)) == len(names) else [f"{i + 1}: {n}" for i, n in enumerate(names)]
    diffs = config_differences(runs, labels)
    chart = plot_runs(runs, labels, out)
    lines = ["config differences:", format_table(diffs) if diffs else "(none: the configs are the same)", "",
             "metrics:", format_table(metric_rows(runs, labels))]
    unreadable = [f"  {label}: {r.why}" for label, r in zip(labels, runs, strict=True) if r.status == "unreadable"]
    if unreadable:
        lines += ["", "unreadable:", *unreadable]
    lines += ["", f"chart: {chart}"]
    return "\n".join(lines)
