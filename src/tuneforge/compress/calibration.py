"""Calibration rows for the methods that look at activations: Wanda, block importance, llama.cpp's imatrix."""

from __future__ import annotations

from tuneforge.errors import UserError


def calibration_batches(tok, task, rows: list[dict], *, max_len: int, batch_size: int) -> list[dict]:
    """Training conversations (prompt + answer), batched: what Wanda norms and block importance are taken on."""
    from tuneforge.data.encode import collate
    from tuneforge.training.setup import encode_rows

    if not rows:
        raise UserError("no calibration rows: set data.train to the task's training split")
    feats = encode_rows(tok, task, rows, max_len)
    return [collate(feats[i : i + batch_size], tok.pad_token_id) for i in range(0, len(feats), batch_size)]


def gguf_importance(cfg, model, tok, task) -> tuple[dict | None, int]:
    """(llama.cpp's imatrix taken on up to gguf.imatrix_rows training conversations, rows used); (None, 0) when off."""
    if not cfg.gguf.imatrix_rows:
        return None, 0
    from tuneforge.compress.calibration import calibration_batches
    from tuneforge.compress.quant.llamacpp_quantize import activation_importance
    from tuneforge.tasks.splits import load_train_rows

    rows = load_train_rows(cfg, task)[: cfg.gguf.imatrix_rows]
    batches = calibration_batches(tok, task, rows, max_len=cfg.gguf.imatrix_max_len, batch_size=8)
    return activation_importance(model, batches), len(rows)
