"""Writing a model folder: one way for every verb that saves weights (finetune, distill, prune, quantize,
export, the embedded model's import)."""

from __future__ import annotations

from pathlib import Path

from tuneforge.fileio import atomic_dir
from tuneforge.models.adapters import is_adapter_model


def save_model(model, tok, folder: str | Path, *, extra_files: dict[str, str] | None = None,
               adapter_tokenizer: bool = False) -> Path:
    """save_pretrained (safetensors) + tokenizer, written to a temporary folder and renamed when complete.
    A peft model saves its adapter alone (an adapter is used with its base model's tokenizer), unless
    `adapter_tokenizer` (a classifier's adapter also carries its tokenizer). `extra_files` (name -> text) are
    written into the folder before the rename, so a finished folder always has them."""
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        if adapter_tokenizer or not is_adapter_model(model):
            tok.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return Path(folder)
