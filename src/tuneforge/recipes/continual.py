"""`tuneforge continual CONFIG`: train one model on task after task and keep a ledger of what each stage cost.

    base ─► score every stage's dev set (+ probes) ─► stage 1 ─► score all ─► stage 2 ─► score all ─► ...

Each stage trains through the same training loop as finetune (resume, checkpoints, mid-run dev scores), with the
method of continual.strategy; a list of strategies runs each in turn (the base model scored once) and writes the
table that compares them. Ctrl-C during a stage saves a checkpoint; the printed command resumes at that stage.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from tuneforge.config import config_from_args
from tuneforge.continual.config import ContinualConfig
from tuneforge.errors import UserError
from tuneforge.fileio import write_json
from tuneforge.runs import complete_run


def continual_run_dir(cfg: ContinualConfig) -> Path:
    """A new runs/<name>; with train.resume (latest, or a checkpoint a Ctrl-C printed) the run it belongs to."""
    from tuneforge.runs import continue_run, new_run_dir

    resume = cfg.train.resume
    if not resume:
        return new_run_dir(cfg)
    if resume == "latest":
        folder = Path(cfg.output_dir) / cfg.name
    else:
        path = Path(resume).resolve()
        folder = next((p for p in path.parents if (p / "config.yaml").exists()), None)  # the run's top folder
        if folder is None or not (path / "step.json").exists():
            raise UserError(f"train.resume: {resume} is not a checkpoint of a continual run; pass the "
                            "checkpoints/step-N folder the interrupted run printed, or train.resume=latest")
    if not (folder / "config.yaml").exists():
        raise UserError(f"train.resume=latest: {folder} is not a continual run folder; drop train.resume to start one")
    continue_run(folder)
    return folder


def strategies_of(cfg: ContinualConfig) -> list[str]:
    s = cfg.continual.strategy
    return list(s) if isinstance(s, list) else [s]


def served_bytes(run_dir: Path, strategy: str, ledger: str, stages: int) -> int:
    """Adapter bytes a deployment needs: one adapter, or every stage's when requests are routed per task."""
    files = sorted((run_dir / "stages").glob("*/adapter/adapter_model.safetensors"))
    if not files:
        return 0
    return sum(f.stat().st_size for f in files) if ledger == "routed" else files[-1].stat().st_size


def continual(cfg: ContinualConfig) -> Path:
    import torch
    from accelerate.utils import set_seed

    from tuneforge.continual.report import strategy_row, write_continual_report, write_strategies_report
    from tuneforge.continual.runner import ContinualRun, read_columns, score_columns
    from tuneforge.models import load_model
    from tuneforge.models.dtypes import use_bf16
    from tuneforge.tasks.splits import truncate_sources
    from tuneforge.training.optim import make_accelerator, refuse_sharding

    columns = read_columns(cfg)  # bad data fails before the model loads or a folder is made
    resume_path = Path(cfg.train.resume).resolve() if cfg.train.resume not in (None, "latest") else None
    run_dir = continual_run_dir(cfg)
    bf16 = use_bf16(cfg.train.bf16, "cuda" if torch.cuda.is_available() else "cpu")
    accelerator = make_accelerator(bf16)
    refuse_sharding(accelerator, "continual's stages")  # they share one model object across stages
    set_seed(cfg.train.seed)
    # a LoRA's frozen base in bf16 where bf16 is native, as finetune does
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if bf16 else "float32")
    base, tok = load_model(cfg.model, dtype=dtype, device=str(accelerator.device))
    for col in columns:
        col.dev_rows = truncate_sources(col.task, col.dev_rows, tok, "dev")
    strategies = strategies_of(cfg)
    base_path = run_dir / "base_scores.json"
    if base_path.exists():
        base_scores = json.loads(base_path.read_text(encoding="utf-8"))
    else:
        base_scores, seconds = score_columns(base, tok, columns, cfg.eval, "base model")
        write_json(base_path, {**base_scores, "_seconds": seconds})
    base_scores = {k: v for k, v in base_scores.items() if not k.startswith("_")}
    rows = []
    for strategy in strategies:
        one = cfg.model_copy(update={"continual": cfg.continual.model_copy(update={"strategy": strategy})})
        folder = run_dir if len(strategies) == 1 else run_dir / strategy
        folder.mkdir(parents=True, exist_ok=True)
        run = ContinualRun(one, folder, columns, copy.deepcopy(base), tok, accelerator, base_scores)
        state = run.run(resume_path)
        title = f"tuneforge continual: {cfg.name} ({strategy})"
        write_continual_report(folder, state, one, title=title)
        ledgers = {name: book.to_json() for name, book in state["ledgers"].items()}
        complete_run(folder, {"strategy": strategy, "stages": [s.name for s in cfg.stages],
                              "probes": [p.name for p in cfg.eval.probes], "ledgers": ledgers,
                              "stage_runs": state["stages"]})
        for name, book in state["ledgers"].items():
            rows.append(strategy_row(strategy, name, book, state, served_bytes(folder, strategy, name, len(cfg.stages))))
            print_ledger(strategy if name == strategy else f"{strategy} ({name})", book)
    if len(strategies) > 1:
        table = write_strategies_report(run_dir, rows, title=cfg.name)
        complete_run(run_dir, {"strategies": rows})
        print("\n" + table)
    print(f"\nreport: {run_dir / 'report.html'}")
    return run_dir


def print_ledger(title: str, book) -> None:
    from tuneforge.continual.report import ledger_rows, summary_rows
    from tuneforge.report import format_table

    print(f"\n{title}: score after each stage\n" + format_table(ledger_rows(book)))
    print(format_table(summary_rows(book)))


def run(args) -> int:
    continual(config_from_args(ContinualConfig, args))
    return 0
