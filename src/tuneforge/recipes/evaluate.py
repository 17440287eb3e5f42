"""`tuneforge evaluate CONFIG`: batched greedy generation + the task's metrics on the dev split."""

from __future__ import annotations

import time
from pathlib import Path

from tuneforge.config import EvaluateConfig, config_from_args
from tuneforge.data.seq2seq import check_task
from tuneforge.errors import UserError
from tuneforge.fileio import write_jsonl
from tuneforge.runs import complete_run
from tuneforge.scoring import score_task
from tuneforge.tasks.prompts import draw_shots
from tuneforge.tasks.splits import build_task, load_split, truncate_sources


def evaluate(cfg: EvaluateConfig) -> Path:
    from tuneforge.models import load_model
    from tuneforge.models.loading import model_kind
    from tuneforge.runs import new_run_dir

    task = build_task(cfg)
    kind = model_kind(cfg.model)  # encoder-decoder (T5, BART, Marian) or decoder-only, from config.json
    if kind == "seq2seq":
        check_task(task)
    if cfg.eval.strategy not in task.strategies:
        raise UserError(f"eval.strategy: task '{task.name}' does not support {cfg.eval.strategy}; "
                        f"it supports {', '.join(task.strategies)}")
    rows = load_split(task, cfg.data.dev, "dev")[: cfg.eval.limit]
    shots = []
    if cfg.eval.strategy == "few_shot" and cfg.eval.shots:  # data.train is read only when shots are drawn
        shots = draw_shots(load_split(task, cfg.data.train, "train"), cfg.eval.shots, seed=0)
    model, tok = load_model(cfg.model, dtype=cfg.dtype, adapter=cfg.adapter, kind=kind)
    rows = truncate_sources(task, rows, tok, "dev")
    run_dir = new_run_dir(cfg)
    t0 = time.time()
    metrics, predictions = score_task(model, tok, task, rows, strategy=cfg.eval.strategy, shots=shots,
                                      batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens)
    seconds = time.time() - t0
    write_jsonl(run_dir / "predictions.jsonl", predictions)
    complete_run(run_dir, {"task": task.name, "primary_metric": task.primary_metric, "strategy": cfg.eval.strategy,
                           "model": cfg.model, "adapter": cfg.adapter, "rows": len(rows), "seconds": seconds,
                           "metrics": metrics})
    print(f"{task.name} {cfg.eval.strategy} on {len(rows)} rows: "
          + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    print(f"run folder: {run_dir}")
    return run_dir


def run(args):
    from tuneforge.training.classifier import wants_classifier

    if wants_classifier(args):
        raise UserError("head: classifier recipes are scored by `tuneforge finetune` itself (its report has the dev "
                        "metrics); `tuneforge evaluate` scores generative models")
    evaluate(config_from_args(EvaluateConfig, args))
