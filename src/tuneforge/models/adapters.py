"""What a LoRA adapter folder is, checked once for every verb that takes one (finetune, evaluate, serve,
chat, deploy, export, quantize, compare, ...), so each says the same thing about the same folder."""

from __future__ import annotations

from pathlib import Path

from tuneforge.errors import UserError

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_model(model) -> bool:
    """A peft-wrapped model: what it saves is its adapter (adapter/), not a whole model folder."""
    return hasattr(model, "peft_config")


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
