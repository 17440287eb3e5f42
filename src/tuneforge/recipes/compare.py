"""`tuneforge compare CONFIG`: one table and one chart for a set of models on the same task and data.

Each row is a model artifact: an HF folder (the base model, a pruned or distilled model/, a torchao-saved
folder), a base model plus a LoRA adapter (merged before measuring), or a .gguf file (scored and timed
through llama.cpp with llama-cpp-python). For each: parameters and non-zero parameters, weights size on
disk, prefill and decode tokens/s on this machine, the task metric and its change from the baseline row.

Writes runs/<name>/: config.yaml, compare.json (last: a complete run), compare.md, compare.png, report.md/html;
while it runs, compare.partial.json holds the rows measured so far.
"""

from __future__ import annotations

import gc
import math
from pathlib import Path

from pydantic import Field, model_validator

from tuneforge.compress.sections import SpeedSection
from tuneforge.config import RunConfig, Section
from tuneforge.errors import UserError
from tuneforge.fileio import write_json, write_text


class ModelRow(Section):
    name: str = Field(description="the row's label in the table")
    path: str | None = Field(None, description="HF folder, torchao-saved folder or .gguf file; null: the embedded model")
    adapter: str | None = Field(None, description="a LoRA adapter folder on top of `path` (merged before measuring)")
    baseline: bool = Field(False, description="the uncompressed reference: deltas are taken from this row")


class CompareConfig(RunConfig):
    models: list[ModelRow] = Field(default_factory=list, description="the rows of the table, in order")
    speed: SpeedSection = Field(default_factory=SpeedSection)
    gguf_threads: int | None = Field(None, ge=1, description="llama.cpp threads; null: all cores")

    @model_validator(mode="after")
    def _check_rows(self):
        if not self.models:
            raise ValueError("models: list at least one model row (name, path[, adapter, baseline])")
        if sum(m.baseline for m in self.models) > 1:
            raise ValueError("models: mark at most one row with baseline: true")
        if len({m.name for m in self.models}) != len(self.models):
            raise ValueError("models: every row needs a distinct name")
        if self.data.dev is None:
            raise ValueError("data.dev is required: every model is scored on it")
        return self


def is_gguf(row: ModelRow) -> bool:
    return bool(row.path) and row.path.endswith(".gguf")


def check_rows(rows: list[ModelRow]) -> None:
    """Every problem with the rows at once, before anything is loaded."""
    from tuneforge.compress.quant.llamacpp import has_gguf_magic
    from tuneforge.models import resolve_model
    from tuneforge.models.adapters import check_adapter

    problems = []
    for i, row in enumerate(rows):
        where = f"models[{i}] ({row.name})"
        if is_gguf(row):
            path = Path(row.path).expanduser()
            if not path.is_file():
                problems.append(f"{where}: path {row.path} does not exist")
            elif not has_gguf_magic(path):
                problems.append(f"{where}: {row.path} is not a GGUF file (no GGUF magic); export it with `tuneforge export`")
        else:
            try:
                resolve_model(row.path, do_import=False)
            except UserError as e:
                problems.append(f"{where}: {e}")
        if row.adapter:
            try:
                check_adapter(row.adapter)
            except UserError as e:
                problems.append(f"{where}: {e}")
        if is_gguf(row) and row.adapter:
            problems.append(f"{where}: a .gguf row cannot take an adapter (merge it before exporting)")
    if any(is_gguf(r) for r in rows):
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is None:
            from tuneforge.compress.quant.llamacpp import INSTALL

            problems.append(f"a .gguf row needs llama-cpp-python: {INSTALL}")
    if problems:
        raise UserError(f"compare: {len(problems)} problem(s) with the models list:\n" + "\n".join(f"  {p}" for p in problems))


def measure_hf(row: ModelRow, cfg: CompareConfig, task, dev_rows) -> dict:
    from tuneforge.compress.measure import (
        count_parameters,
        hf_speed,
        speed_prompt_ids,
        stored_dtypes,
        weights_size,
    )
    from tuneforge.models import resolve_model
    from tuneforge.models.loading import load_merged
    from tuneforge.scoring import score

    model, tok = load_merged(row.path, row.adapter, cfg.dtype)
    total, nonzero = count_parameters(model)
    folder = resolve_model(row.path)
    size = weights_size(folder) + (weights_size(row.adapter) if row.adapter else 0)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    metrics, _ = score(model, tok, task, dev_rows, cfg.eval, label=row.name)
    speed = hf_speed(model, speed_prompt_ids(tok, cfg.speed.prompt_tokens), cfg.speed.new_tokens, cfg.speed.repeats)
    return {"engine": "transformers", "dtype": dtype, "stored": stored_dtypes(folder),
            "parameters": total, "nonzero_parameters": nonzero,
            "size_mb": size / 1e6, **speed, "metric": metrics[task.primary_metric]}


def measure_gguf(row: ModelRow, cfg: CompareConfig, task, dev_rows) -> dict:
    """Scored with the quantization recipe's llama.cpp runner (the GGUF's own chat template), timed like HF rows."""
    from tuneforge.compress.measure import gguf_speed, gguf_storage, weights_size
    from tuneforge.compress.quant.llamacpp import LlamaCppRunner, score_with_runner

    runner = LlamaCppRunner(row.path, n_threads=cfg.gguf_threads)
    metrics, _ = score_with_runner(runner, task, dev_rows, max_new_tokens=cfg.eval.max_new_tokens, desc=row.name)
    print(f"{row.name}: {task.primary_metric} = {metrics[task.primary_metric]:.4f} on {len(dev_rows)} rows")
    text = "The film was a quiet surprise: patient, funny and warm, with a cast that never oversells a scene. " * 64
    prompt = runner.llm.tokenize(text.encode("utf-8"), add_bos=False)[: cfg.speed.prompt_tokens]
    speed = gguf_speed(runner.llm, prompt, cfg.speed.new_tokens, cfg.speed.repeats)
    parameters, types = gguf_storage(row.path)
    return {"engine": "llama.cpp", "dtype": types[0], "stored": "+".join(types),
            "parameters": parameters, "nonzero_parameters": None,
            "size_mb": weights_size(row.path) / 1e6, **speed, "metric": metrics[task.primary_metric]}


def table_rows(results: list[dict], primary: str) -> list[dict]:
    """Add the change from the baseline (first row if none is marked) and speed ratios."""
    base = next((r for r in results if r.get("baseline")), results[0])
    out = []
    for r in results:
        nz = r.get("nonzero_parameters")
        out.append({
            "model": r["name"],
            "engine": r["engine"],
            "runs in": r["dtype"],
            "stored": r.get("stored"),
            "params (M)": r["parameters"] / 1e6,
            "non-zero (M)": nz / 1e6 if nz is not None else None,
            "size (MB)": r["size_mb"],
            "prefill tok/s": r["prefill_tok_s"],
            "decode tok/s": r["decode_tok_s"],
            "decode ×": r["decode_tok_s"] / base["decode_tok_s"],
            primary: r["metric"],
            f"Δ {primary}": r["metric"] - base["metric"],
        })
    return out


def plot_compare(rows: list[dict], primary: str, path: Path) -> Path:
    """Per model: the task metric, size on disk and decode tokens/s, side by side (bar labels give the values)."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    from tuneforge.report import FONT, _save

    names = [r["model"] for r in rows]
    with rc_context(FONT):
        fig = Figure(figsize=(max(12.0, 2.0 * len(rows) + 4), 4.6), layout="constrained")
        panels = ((primary, "C0"), ("size (MB)", "C2"), ("decode tok/s", "C1"))
        for ax, (key, color) in zip(fig.subplots(1, len(panels)), panels, strict=True):
            values = [r[key] if r[key] is not None else math.nan for r in rows]
            bars = ax.bar(range(len(rows)), values, color=color)
            ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], padding=2, fontsize=8)
            ax.set_xticks(range(len(rows)), names, rotation=30, ha="right")
            ax.set_title(key)
            ax.grid(axis="y", alpha=0.3)
            ax.set_axisbelow(True)
            ax.margins(y=0.15)
        fig.suptitle("Compression: quality, size and speed on the same task and data")
        return _save(fig, path)


def compare(cfg: CompareConfig) -> Path:
    from tuneforge.report import format_table, write_report
    from tuneforge.runs import new_run_dir
    from tuneforge.tasks import get_task
    from tuneforge.tasks.splits import load_rows

    check_rows(cfg.models)
    task = get_task(cfg.task.name, **cfg.task.options())
    _, dev_rows = load_rows(cfg, task)
    run_dir = new_run_dir(cfg)
    results = []
    summary = {"task": task.name, "metric": task.primary_metric, "rows": results}
    for row in cfg.models:
        measured = measure_gguf(row, cfg, task, dev_rows) if is_gguf(row) else measure_hf(row, cfg, task, dev_rows)
        results.append({"name": row.name, "path": row.path, "adapter": row.adapter, "baseline": row.baseline, **measured})
        # each row is kept as it is measured (an interrupted run keeps them), under a name that says it is partial
        write_json(run_dir / "compare.partial.json", {**summary, "measured": f"{len(results)} of {len(cfg.models)}"})
        gc.collect()
    rows = table_rows(results, task.primary_metric)
    write_text(run_dir / "compare.md", format_table(rows) + "\n")
    chart = plot_compare(rows, task.primary_metric, run_dir / "compare.png")
    write_report(
        run_dir, title=f"Compression comparison on {task.name}",
        summary=[("task", task.name), ("dev rows", len(dev_rows)), ("metric", task.primary_metric)],
        tables=[("Size, speed and quality", rows)], images=[("Quality and decode speed", chart)],
        notes=["Speed: one stream, greedy, best of the timed runs on this machine; adapters are merged first.",
               "Size counts weight files only (safetensors/bin/gguf), base model plus adapter where there is one.",
               "stored: the dtypes in those files, most bytes first (a bf16-saved model is half the size of the same "
               "model in f32; for GGUF, its tensor types); runs in: the dtype it was loaded, scored and timed in (the "
               "config's dtype; for GGUF, the type holding most of the file, run by llama.cpp)."],
    )
    write_json(run_dir / "compare.json", summary)  # last: a complete run
    (run_dir / "compare.partial.json").unlink(missing_ok=True)
    print(format_table(rows))
    return run_dir


# -- CLI ------------------------------------------------------------------------------------------------


def run(args) -> int:
    from tuneforge.config import config_from_args

    compare(config_from_args(CompareConfig, args))
    return 0
