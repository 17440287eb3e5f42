"""The run's accelerator, optimizer, learning-rate schedule and parameter count."""

from __future__ import annotations

import torch
from torch import nn


def make_accelerator(bf16: bool):
    """The run's Accelerator. accelerate keeps one process-wide state and refuses a second Accelerator with
    another precision; a second run in one process (a notebook, the tests on a CPU with bf16) may need one,
    so the old state is dropped first (accelerate has no public call for it; distributed setup is kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="bf16" if bf16 else "no")


def make_optimizer(model: nn.Module, train_cfg):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)


def make_scheduler(optimizer, train_cfg, total_steps: int):
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[train_cfg.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=int(train_cfg.warmup_ratio * total_steps),
                         num_training_steps=total_steps)


def count_params(model: nn.Module) -> tuple[int, int]:
    from tuneforge.models.bnb import weight_count

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(weight_count(p) for p in model.parameters())
    return trainable, total
