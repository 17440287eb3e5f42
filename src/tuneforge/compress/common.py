"""Steps shared by the prune, distill and compare recipes: rows, scoring, loading merged, saving."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from tuneforge.errors import UserError
from tuneforge.fileio import atomic_dir


def load_train_rows(cfg, task) -> list[dict]:
    """data.train's rows (or []) through the lead's reader (tasks may read their own files)."""
    from tuneforge.recipes.common import load_split

    return load_split(task, cfg.data.train, "train") if cfg.data.train else []


def load_rows(cfg, task) -> tuple[list[dict], list[dict]]:
    """(train rows or [], dev rows cut to eval.limit)."""
    from tuneforge.recipes.common import load_split

    dev = load_split(task, cfg.data.dev, "dev")[: cfg.eval.limit] if cfg.data.dev else []
    return load_train_rows(cfg, task), dev


def score(model, tok, task, rows: list[dict], eval_cfg, *, label: str) -> tuple[dict, list[dict]]:
    """The task's metrics on `rows` with the same prompting for every model; adds seconds taken."""
    from tuneforge.recipes.common import truncate_sources
    from tuneforge.recipes.evaluate import score_task

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


def load_merged(model_name: str | None, adapter: str | None, dtype: str):
    """(model, tokenizer) with any LoRA adapter merged in: compression works on plain weights."""
    from tuneforge.models import load_model

    model, tok = load_model(model_name, dtype=dtype, adapter=adapter)
    if adapter:
        model = model.merge_and_unload()
    model.eval()
    return model, tok


def save_model(model, tok, folder: Path) -> Path:
    """save_pretrained (safetensors) + tokenizer, written to a temporary folder and renamed when complete."""
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return folder


def reload(folder: Path, dtype: str):
    from transformers import AutoModelForCausalLM

    from tuneforge.models.loading import pick_dtype

    return AutoModelForCausalLM.from_pretrained(folder, dtype=pick_dtype(dtype))


def calibration_batches(tok, task, rows: list[dict], *, max_len: int, batch_size: int) -> list[dict]:
    """Training conversations (prompt + answer), batched: what Wanda norms and block importance are taken on."""
    from tuneforge.compress.train import encode_rows
    from tuneforge.recipes.training import collate

    if not rows:
        raise UserError("no calibration rows: set data.train to the task's training split")
    feats = encode_rows(tok, task, rows, max_len)
    return [collate(feats[i : i + batch_size], tok.pad_token_id) for i in range(0, len(feats), batch_size)]


def as_float32(model) -> None:
    """Trainable copies in fp32 (AdamW on bf16 weights loses small updates); bf16 stays for autocast."""
    if next(model.parameters()).dtype != torch.float32:
        model.float()
