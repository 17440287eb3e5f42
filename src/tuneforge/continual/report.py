"""The continual run's report: the ledger as a table and a heatmap, each task's score across stages, the summary
numbers, and the table that sets strategies side by side."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure

from tuneforge.continual.ledger import Ledger
from tuneforge.report import FONT, _save, format_table, format_value, plot_metric_bars, write_report

DEFINITIONS = [
    "R[i][j] is the score on task j (its own primary metric) after stage i; row 0 is the base model.",
    "average final = mean over trained tasks of R[T][j]; BWT = mean over j < T of R[T][j] - R[j][j] (negative: "
    "later stages cost earlier tasks); forgetting of task j = max over rows i < T of R[i][j] - R[T][j]; FWT = mean "
    "over j >= 2 of R[j-1][j] - R[0][j] (GEM, Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018; TRACE 2023).",
    "Every difference is signed so that positive means better: a lower-is-better metric (perplexity) is negated.",
]


def row_labels(book: Ledger) -> list[str]:
    return ["base"] + [f"after {book.tasks[i]}" for i in range(len(book.rows) - 1)]


def ledger_rows(book: Ledger) -> list[dict]:
    return [{"row": label, **dict(zip(book.tasks, row, strict=True))} for label, row in zip(row_labels(book), book.rows, strict=True)]


def plot_ledger(book: Ledger, path: Path, title: str) -> Path:
    """Heatmap of each column's change from the base model (signed: green is better), the scores written in."""
    from matplotlib import rc_context

    rows, cols = len(book.rows), len(book.tasks)
    change = [[book.gain(j, book.rows[0][j], book.rows[i][j]) for j in range(cols)] for i in range(rows)]
    scale = max((abs(v) for r in change for v in r), default=1.0) or 1.0
    with rc_context(FONT):
        fig = Figure(figsize=(1.6 + 1.3 * cols, 1.2 + 0.55 * rows))
        ax = fig.add_subplot()
        image = ax.imshow(change, cmap="RdYlGn", vmin=-scale, vmax=scale, aspect="auto")
        for i in range(rows):
            for j in range(cols):
                ax.text(j, i, format_value(book.rows[i][j]), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(cols), [t + (" (probe)" if j >= book.stages else "") for j, t in enumerate(book.tasks)],
                      rotation=20, ha="right")
        ax.set_yticks(range(rows), row_labels(book))
        fig.colorbar(image, ax=ax, label="change from base (positive = better)")
        ax.set_title(title)
        return _save(fig, path)


def plot_curves(book: Ledger, path: Path, title: str) -> Path:
    """Each column's change from the base model across stages: where a task is learnt and where it is lost."""
    from matplotlib import rc_context

    with rc_context(FONT):
        fig = Figure(figsize=(6.5, 4))
        ax = fig.add_subplot()
        xs = range(len(book.rows))
        for j, task in enumerate(book.tasks):
            ys = [book.gain(j, book.rows[0][j], book.rows[i][j]) for i in xs]
            ax.plot(xs, ys, marker="o", label=task, ls="--" if j >= book.stages else "-")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(list(xs), row_labels(book), rotation=20, ha="right")
        ax.set_ylabel("change from base (positive = better)")
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=8)
        ax.set_title(title)
        return _save(fig, path)


def summary_rows(book: Ledger) -> list[dict]:
    s = book.summary()
    row = {"average final": s.get("average_final"), "BWT": s.get("bwt"), "FWT": s.get("fwt")}
    row |= {f"forgetting {t}": v for t, v in s.get("forgetting", {}).items()}
    row |= {f"probe {t}": v["change"] for t, v in s.get("probes", {}).items()}
    return [row]


def write_continual_report(run_dir: Path, state: dict, cfg, *, title: str) -> None:
    images, tables = [], []
    for name, book in state["ledgers"].items():
        tables += [(f"Ledger ({name}): score after each stage", ledger_rows(book)),
                   (f"Summary ({name})", summary_rows(book))]
        images += [(f"Ledger ({name}): change from the base model", plot_ledger(book, run_dir / f"ledger_{name}.png",
                                                                               f"{cfg.name}: {name}")),
                   (f"Each task across stages ({name})", plot_curves(book, run_dir / f"curves_{name}.png", name))]
    stage_rows = [{**{k: v for k, v in s.items() if not isinstance(v, dict)},
                   **{f"scoring s ({name})": v for name, v in s.get("scoring_seconds", {}).items()}}
                  for s in state["stages"]]
    tables.append(("Stages: training and scoring cost", stage_rows))
    summary = [("strategy", cfg.continual.strategy), ("model", cfg.model or "embedded default"),
               ("stages", " → ".join(s.name for s in cfg.stages)),
               ("probes", ", ".join(p.name for p in cfg.eval.probes) or "none")]
    write_report(run_dir, title=title, summary=summary, tables=tables, images=images, notes=DEFINITIONS)


def strategy_row(strategy: str, ledger: str, book: Ledger, state: dict, served_bytes: int) -> dict:
    s = book.summary()
    stages = state["stages"]
    last = book.tasks[book.stages - 1]
    return {"strategy": strategy if ledger == strategy else f"{strategy} ({ledger})",
            "average final": s.get("average_final"), "BWT": s.get("bwt"),
            **{f"forgetting {t}": v for t, v in s.get("forgetting", {}).items()},
            f"last task ({last})": book.rows[-1][book.stages - 1],
            **{f"probe {t}": v["change"] for t, v in s.get("probes", {}).items()},
            "train s": sum(x.get("seconds", 0.0) for x in stages),
            "tokens": sum(x.get("tokens", 0) for x in stages),
            "served MB": served_bytes / 1e6}


def write_strategies_report(run_dir: Path, rows: list[dict], *, title: str) -> str:
    """The strategies side by side (table + bars of average final score and BWT); returns the markdown table."""
    bars = {r["strategy"]: {k: r[k] for k in ("average final", "BWT") if isinstance(r.get(k), float)} for r in rows}
    image = plot_metric_bars(bars, run_dir / "strategies.png", title=f"{title}: strategies")
    write_report(run_dir, title=f"{title}: strategies", summary=[("strategies", len(rows))],
                 tables=[("Strategies", rows)], images=[("Average final score and BWT by strategy", image)],
                 notes=DEFINITIONS + ["served MB: the adapter files a deployment must hold for the strategy "
                                      "(routed: one adapter per task)."])
    return format_table([{k: (v if not (isinstance(v, float) and math.isnan(v)) else None) for k, v in r.items()}
                         for r in rows])
