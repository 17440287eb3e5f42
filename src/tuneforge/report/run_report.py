"""The finetune run's report: before/after table, loss curve, metric bars; and the terminal summary."""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.report import format_table, plot_loss, plot_metric_bars, write_report
from tuneforge.tasks.base import LOWER_IS_BETTER


def read_prompting(folder: str, task: str, dev_rows: int) -> list[dict]:
    """The strategies of a prompt-eval run, checked to be comparable (same task, same number of dev rows)."""
    path = Path(folder) / "metrics.json"
    if not path.is_file():
        raise UserError(f"prompting: {path} not found; run `tuneforge prompt-eval` first, or point at its run folder")
    try:
        found = json.loads(path.read_text())
        strategies = found["strategies"]
    except (ValueError, KeyError) as e:
        raise UserError(f"prompting: {path} is not a prompt-eval result ({e})") from e
    if found.get("task") != task:
        raise UserError(f"prompting: {folder} scored task '{found.get('task')}', this run trains '{task}'")
    if found.get("dev_rows") != dev_rows:
        raise UserError(f"prompting: {folder} scored {found.get('dev_rows')} dev rows, this run scores {dev_rows}; "
                        "use the same data.dev and eval.limit so the rows compare")
    return [{"strategy": name, "metrics": metrics} for name, metrics in strategies.items()]


def comparison_rows(result: dict) -> list[dict]:
    rows = [{"arm": f"prompting: {r['strategy']}", **r["metrics"]} for r in result.get("prompting", [])]
    if result.get("before"):
        rows.insert(0, {"arm": "before (zero-shot)", **result["before"]})
    if result.get("after"):
        rows.append({"arm": f"after ({result['method']})", **result["after"]})
    keep = [k for k in ("accuracy", "macro_f1", "bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum",
                        "exact_match", "f1", "loss", "perplexity", "unparseable") if any(k in r for r in rows)]
    return [{"arm": r["arm"], **{k: r.get(k) for k in keep}} for r in rows]


COST_TITLE = "What the run cost elsewhere"


def cost_rows(result: dict) -> list[dict]:
    """The trained task's own before/after gain, then each probe's (eval.probes) change; [] without probes."""
    probes = result.get("probes") or {}
    if not probes:
        return []
    metric = result.get("primary_metric")
    own = {"task": result["task"], "metric": metric, "rows": result.get("dev_rows"),
           "before": (result.get("before") or {}).get(metric), "after": (result.get("after") or {}).get(metric),
           "lower_is_better": metric in LOWER_IS_BETTER}
    own["change"] = own["after"] - own["before"] if own["after"] is not None and own["before"] is not None else None
    entries = [(f"{result['task']} (trained)", own)] if own["after"] is not None else []  # no data.dev: no own row
    entries += probes.items()
    return [{"evaluation": name, "task": p["task"], "metric": p["metric"], "rows": p.get("rows"), "before": p["before"],
             "after": p["after"], "change": p["change"], "better when": "lower" if p["lower_is_better"] else "higher",
             "effect": effect(p["change"], p["lower_is_better"])} for name, p in entries]


def effect(change: float | None, lower_is_better: bool) -> str:
    if change is None:
        return "not scored before"
    if change == 0:
        return "no change"
    return "better" if (change < 0) == lower_is_better else "worse"


def write_run_report(run_dir: Path, result: dict, history: list[dict], *, name: str | None = None) -> None:
    """`name` titles the report when `run_dir` is a staging folder that is renamed afterwards."""
    images = []
    train_rows = [h for h in history if "loss" in h]
    if train_rows:
        images.append(("Training loss (and dev metrics where evaluated)", plot_loss(history, run_dir / "loss_curve.png")))
    rows = comparison_rows(result)
    bars = {r["arm"]: {k: v for k, v in r.items() if isinstance(v, float) and k not in ("loss", "perplexity")} for r in rows}
    if any(bars.values()):
        images.append(("Dev metrics before and after", plot_metric_bars(bars, run_dir / "metrics.png", title=f"{result['task']}: dev metrics")))
    train = result["train"]
    summary = [("task", result["task"]), ("method", result["method"]), ("model", result.get("model") or "embedded default"),
               ("trainable parameters", f"{train['trainable_params']:,} of {train['total_params']:,}"),
               ("train tokens", f"{train['tokens']:,}"), ("train seconds", f"{train['seconds']:.1f}"),
               ("tokens/s", f"{train['tokens_per_second']:.1f}"), ("artifact", result["artifact"])]
    if "peak_gpu_memory_gb" in train:
        summary.insert(-1, ("peak GPU memory while training", f"{train['peak_gpu_memory_gb']:.2f} GB"))
    tables = [("Dev metrics", rows)]
    if cost_rows(result):
        tables.append((COST_TITLE, cost_rows(result)))
    write_report(run_dir, title=f"tuneforge finetune: {name or run_dir.name}", summary=summary,
                 tables=tables, images=images)


def print_summary(result: dict, run_dir: Path) -> None:
    print()
    print(format_table(comparison_rows(result)))
    if cost_rows(result):
        print(f"\n{COST_TITLE}:")
        print(format_table(cost_rows(result)))
    t = result["train"]
    peak = f", peak GPU memory {t['peak_gpu_memory_gb']:.2f} GB" if "peak_gpu_memory_gb" in t else ""
    print(f"\ntrained {t['steps']} steps, {t['tokens']:,} tokens in {t['seconds']:.0f}s ({t['tokens_per_second']:.0f} tokens/s{peak})")
    artifact = Path(result["artifact"]).name if result.get("artifact") else "adapter"  # model/ after method full or freeze
    print(f"report: {run_dir / 'report.html'}  (and report.md, metrics.json, {artifact}/)")
