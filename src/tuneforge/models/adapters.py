"""What a LoRA adapter folder is, checked once for every verb that takes one (finetune, evaluate, serve,
chat, deploy, export, quantize, compare, ...), so each says the same thing about the same folder."""

from __future__ import annotations

from pathlib import Path

from tuneforge.errors import UserError

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_model(model) -> bool:
    """A peft-wrapped model: what it saves is its adapter (adapter/), not a whole model folder."""
    return hasattr(model, "peft_config")


def base_model(model):
    """The transformers model itself, under a peft wrapper if there is one."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def adapter_problem(path: str | Path) -> str | None:
    """Why `path` is not a LoRA adapter folder, as a clause ("does not exist"), or None when it is one."""
    path = Path(path).expanduser()
    if not path.exists():
        return "does not exist"
    if not path.is_dir():
        return "is a file, not a folder"
    if not (path / ADAPTER_CONFIG).is_file():
        return f"has no {ADAPTER_CONFIG}"
    return None


def check_adapter(adapter: str | Path, name: str | None = None) -> Path:
    """The adapter folder (~ expanded), or a UserError naming it (as NAME=PATH where adapters are named), what
    is missing, and what to pass instead, with the shipped recipe that writes it when there is one."""
    path = Path(adapter).expanduser()
    problem = adapter_problem(path)
    if problem:
        from tuneforge.runs import recipe_hint

        shown = f"{name}={adapter}" if name else str(adapter)
        raise UserError(f"adapter '{shown}' {problem}: pass a run's adapter/ folder{recipe_hint(path)}")
    return path


def check_gguf_adapter(adapter: str | Path, name: str | None = None) -> Path:
    """A LoRA adapter for llama.cpp: a .gguf file, or an export folder holding adapter.gguf; else a UserError
    that says how to make one from a PEFT folder."""
    path = Path(adapter).expanduser()
    shown = f"{name}={adapter}" if name else str(adapter)
    if path.is_dir() and (path / "adapter.gguf").is_file():
        return path / "adapter.gguf"
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if not path.exists():
        raise UserError(f"adapter '{shown}' does not exist: pass an adapter .gguf file or a `tuneforge export` "
                        "folder (format gguf_adapter)")
    raise UserError(f"adapter '{shown}' is not a GGUF adapter: the llamacpp engine needs one; write it from the PEFT "
                    "folder with `tuneforge export recipes/export_gguf_adapter.yaml adapter=PATH`, or serve the PEFT "
                    "folder with --engine transformers")
