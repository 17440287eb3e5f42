"""Batched scoring with a task's own metrics: the one scorer behind evaluate, finetune's dev scores and compression."""

from __future__ import annotations

import time
from collections.abc import Sequence

from tuneforge.data.seq2seq import check_task, generate_seq2seq, is_encoder_decoder, prompt_to_source
from tuneforge.generation import generate
from tuneforge.tasks.base import LOWER_IS_BETTER


def score_task(model, tok, task, rows: list[dict], *, strategy: str = "zero_shot", shots: Sequence[dict] = (),
               batch_size: int = 16, max_new_tokens: int | None = None, desc: str | None = None):
    """Score `rows` with the task's metrics. Returns (metrics, predictions)."""
    if task.eval_mode == "loss":
        if is_encoder_decoder(model):
            check_task(task)
        return task.loss_metrics(model, tok, rows, batch_size=batch_size)
    budget = max_new_tokens or (task.cot_max_new_tokens if strategy == "cot" else None) or task.max_new_tokens
    conversations = [task.prompt(row, strategy, shots) for row in rows]
    if is_encoder_decoder(model):  # T5, BART, Marian: the flattened prompt goes to the encoder
        texts = generate_seq2seq(model, tok, [prompt_to_source(c) for c in conversations], max_new_tokens=budget,
                                 batch_size=batch_size, desc=desc or f"scoring {strategy}")
    else:
        texts = generate(model, tok, conversations, max_new_tokens=budget, batch_size=batch_size,
                         desc=desc or f"scoring {strategy}")
    preds = [task.parse(t, strategy) for t in texts]
    refs = [task.reference(r) for r in rows]
    metrics = task.score(preds, refs)
    predictions = [
        {"prompt": conv[-1]["content"], "output": text, "prediction": p, "reference": r}
        for conv, text, p, r in zip(conversations, texts, preds, refs, strict=True)
    ]
    return metrics, predictions


def score(model, tok, task, rows: list[dict], eval_cfg, *, label: str) -> tuple[dict, list[dict]]:
    """The task's metrics on `rows` with the same prompting for every model; adds seconds taken."""
    from tuneforge.scoring import score_task
    from tuneforge.tasks.splits import truncate_sources

    rows = truncate_sources(task, rows, tok, "dev")  # as `tuneforge evaluate` does, so numbers compare
    model.eval()
    start = time.perf_counter()
    metrics, predictions = score_task(
        model, tok, task, rows, strategy=eval_cfg.strategy, batch_size=eval_cfg.batch_size,
        max_new_tokens=eval_cfg.max_new_tokens, desc=f"scoring: {label}",
    )
    metrics = {**metrics, "seconds": time.perf_counter() - start}
    print(f"{label}: {task.primary_metric} = {metrics[task.primary_metric]:.4f} on {len(rows)} rows")
    return metrics, predictions


def score_probes(model, tok, probes: Sequence, *, batch_size: int = 16, when: str = "") -> dict[str, dict]:
    """{name: the probe task's metrics + rows + seconds} for each probe (tasks.splits.Probe), zero-shot with the
    task's own answer budget: the trained task's eval.max_new_tokens would cut another task's answers. The
    model's train/eval mode is left as it was (scoring switches it to eval)."""
    from tuneforge.config import EvalConfig

    eval_cfg = EvalConfig(batch_size=batch_size)
    training = model.training
    out = {}
    try:
        for probe in probes:
            label = f"probe {probe.name}" + (f" {when}" if when else "")
            metrics, _ = score(model, tok, probe.task, probe.rows, eval_cfg, label=label)
            out[probe.name] = {**metrics, "rows": len(probe.rows)}
    finally:
        model.train(training)
    return out


def probe_changes(probes: Sequence, before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    """metrics.json's `probes` from score_probes' results before and after training: {name: {task, metric,
    lower_is_better, rows, before, after, change = after - before, seconds (both scorings)}}. A side that was
    not scored, or was scored on another number of rows, is None and so is the change."""
    out = {}
    for probe in probes:
        metric = probe.task.primary_metric
        sides = [(by or {}).get(probe.name) for by in (before, after)]
        sides = [m if m and m.get("rows") == len(probe.rows) else None for m in sides]
        b, a = (m[metric] if m else None for m in sides)
        out[probe.name] = {"task": probe.task.name, "metric": metric, "lower_is_better": metric in LOWER_IS_BETTER,
                           "rows": len(probe.rows), "before": b, "after": a,
                           "change": a - b if a is not None and b is not None else None,
                           "seconds": sum(m["seconds"] for m in sides if m)}
    return out
