"""Checkpoints (trainable weights, optimizer, schedule, RNG), resume, and a Ctrl-C that waits for them."""

from __future__ import annotations

import json
import random
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tuneforge.fileio import atomic_dir, write_json


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(folder: Path, model: nn.Module, optimizer, scheduler, step: int, rng: dict) -> Path:
    """Trainable weights only (an adapter is megabytes, not the whole model), optimizer, scheduler, step, RNG."""
    from safetensors.torch import save_file

    trainable = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    with atomic_dir(folder) as tmp:
        save_file(trainable, str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng},
                   tmp / "state.pt")
        write_json(tmp / "step.json", {"step": step})
    return folder


def load_checkpoint(folder: Path, model: nn.Module, optimizer, scheduler) -> tuple[int, dict]:
    from safetensors.torch import load_file

    weights = load_file(str(folder / "trainable.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    state = torch.load(folder / "state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return json.loads((folder / "step.json").read_text())["step"], state["rng"]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return found[-1] if found else None


@contextmanager
def sigint_held(reraise: bool = False):
    """Ctrl-C waits until the block is done (a checkpoint being written, an optimizer update being applied);
    with `reraise`, a press during the block is raised as KeyboardInterrupt once it is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda *_: pressed.append(1))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed and reraise:
        raise KeyboardInterrupt


def resume_hint(fallback: str | None, checkpoint: Path) -> str | None:
    """The command that resumes from `checkpoint`: the user's own command line with train.resume set, when the
    CLI ran this verb; else `fallback` ("tuneforge prune <config>"). None: the run cannot resume."""
    from tuneforge import runs

    if fallback is None:
        return None
    line = runs.command_line
    if line and len(line) > 1 and line[1] == fallback.split()[1]:
        return runs.with_resume(line, checkpoint)
    return f"{fallback} train.resume={checkpoint}"
