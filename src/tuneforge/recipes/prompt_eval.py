"""`tuneforge prompt-eval CONFIG`: prompting strategies scored on the dev split with the task's own metrics.

zero-shot, few-shot (k rows drawn with a seed from data.train, only as many as fit in `max_len` tokens)
and chain-of-thought (tasks that support it: sentiment, qa) land in one table, the same metrics a
fine-tuned run reports, so prompting is a measured baseline. Writes runs/<name>/: config.yaml,
metrics.json ({strategy: metrics}), predictions.jsonl (one line per dev row and strategy), report.md/html.
Tasks scored by loss (chat) get their held-out loss/perplexity and answers.jsonl (MT-Bench turn 1).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from tuneforge.config import RunConfig, config_from_args
from tuneforge.errors import UserError
from tuneforge.fileio import write_jsonl
from tuneforge.runs import complete_run
from tuneforge.tasks.splits import build_task, load_split

Strategy = Literal["zero_shot", "few_shot", "cot"]


class PromptEvalConfig(RunConfig):
    strategies: list[Strategy] | None = Field(None, description="strategies to score; default: all the task supports")
    shot_seed: int = Field(0, description="seed of the few-shot draw from data.train")
    max_len: int = Field(2048, ge=64, description="context length: few-shot examples that would not fit are skipped")
    questions_limit: int | None = Field(10, ge=0, description="loss tasks (chat): answer this many MT-Bench questions (0: none)")


def prompt_eval(cfg: PromptEvalConfig) -> Path:
    from tuneforge.models import load_model
    from tuneforge.report import write_report
    from tuneforge.runs import new_run_dir
    from tuneforge.scoring import score_task
    from tuneforge.tasks.prompts import check_enough_shots, draw_shots

    task = build_task(cfg)
    strategies = pick_strategies(cfg, task)
    dev = load_split(task, cfg.data.dev, "dev")[: cfg.eval.limit]
    train = load_split(task, cfg.data.train, "train") if "few_shot" in strategies else []
    if "few_shot" in strategies:
        check_enough_shots(train, cfg.eval.shots)
    model, tok = load_model(cfg.model, dtype=cfg.dtype, adapter=cfg.adapter)
    dev, train = task.truncate(dev, tok), task.truncate(train, tok)
    run_dir = new_run_dir(cfg)

    table, results, predictions = [], {}, []
    for strategy in strategies:
        shots = []
        if strategy == "few_shot":
            shots = draw_shots(train, cfg.eval.shots, cfg.shot_seed, task=task, tok=tok, max_len=cfg.max_len,
                               eval_rows=dev, max_new_tokens=task.max_new_tokens)
            if len(shots) < cfg.eval.shots:
                print(f"note: few_shot uses {len(shots)} of eval.shots={cfg.eval.shots} examples: more would not fit "
                      f"max_len={cfg.max_len} tokens with the longest dev prompt")
        t0 = time.time()
        metrics, preds = score_task(model, tok, task, dev, strategy=strategy, shots=shots,
                                    batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens)
        seconds = time.time() - t0
        results[strategy] = {**metrics, "shots": len(shots), "seconds": seconds}
        predictions += [{"strategy": strategy, **p} for p in preds]
        table.append({"strategy": strategy, "shots": len(shots),
                      **{k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)},
                      "seconds": round(seconds, 1)})
        print(f"{task.name} {strategy}: {task.primary_metric}={metrics[task.primary_metric]:.4f} ({seconds:.0f} s)")

    notes = [f"dev: {cfg.data.dev.path}, {len(dev)} rows"]
    if task.max_source_tokens:
        notes.append(f"sources cut to {task.max_source_tokens} tokens: "
                     f"{sum(r['truncated'] for r in dev)} of {len(dev)} dev rows, "
                     f"{sum(r['truncated'] for r in train)} of {len(train)} train rows")
    for strategy, m in results.items():
        for key in ("bleu_signature", "chrf_signature"):
            if key in m:
                notes.append(f"{strategy} {key}: {m[key]}")
    if task.eval_mode == "loss" and cfg.questions_limit != 0 and task.questions:
        from tuneforge.tasks.chat import answer_questions

        answers = answer_questions(model, tok, task, batch_size=cfg.eval.batch_size, limit=cfg.questions_limit)
        write_jsonl(run_dir / "answers.jsonl", answers)
        notes.append(f"answers.jsonl: {len(answers)} answers to {task.questions} (turn 1), for reading")

    write_jsonl(run_dir / "predictions.jsonl", predictions)
    complete_run(run_dir, {"task": task.name, "primary_metric": task.primary_metric,
                           "model": cfg.model, "adapter": cfg.adapter, "dev_rows": len(dev),
                           "strategies": results})
    write_report(run_dir, title=f"Prompting baselines: {task.name}",
                 summary=[("model", cfg.model or "embedded default"), ("dev rows", len(dev)),
                          ("primary metric", task.primary_metric)],
                 tables=[("Strategies on the dev split", table)], images=[], notes=notes)
    print(f"run folder: {run_dir}")
    return run_dir


def pick_strategies(cfg: PromptEvalConfig, task) -> list[str]:
    if cfg.strategies is None:  # few-shot only where there is a train split to draw from
        return [s for s in task.strategies if s != "few_shot" or cfg.data.train is not None]
    unsupported = [s for s in cfg.strategies if s not in task.strategies]
    if unsupported:
        raise UserError(f"strategies: task '{task.name}' does not support {unsupported}; "
                        f"it supports {list(task.strategies)}")
    if "few_shot" in cfg.strategies and cfg.data.train is None:
        raise UserError("strategies: few_shot needs data.train to draw examples from")
    return list(cfg.strategies)


def run(args):
    prompt_eval(config_from_args(PromptEvalConfig, args))
