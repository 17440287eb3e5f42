"""Training pieces the finetune, distill and prune-recovery recipes share: batching, the target-only loss,
optimizer/schedule, checkpoints. The loop itself lives in plain sight in recipes/finetune.py."""

from __future__ import annotations

import json
import math
import random
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tuneforge.data.encode import IGNORE
from tuneforge.fileio import atomic_dir, write_json
from tuneforge.generation import cache_kwarg, output_cache


class TargetOnlyLoss(nn.Module):
    """Summed cross-entropy on target tokens; the LM head runs only where a label exists.

    For a classification-style target (a label word after a 70-token prompt) this skips ~95% of the
    vocabulary projection, the largest single matmul of a small model. Wrapping the model in a module
    (instead of calling its parts from the loop) keeps DDP's gradient hooks working.

    With `share_prefix`, the tokens every row of the batch starts with (system prompt, instruction) run
    through the decoder once per batch, not once per row; the rows then continue from that prefix's
    key/value cache. The result is the same loss and the same gradients (autograd sums the rows'
    gradients through the shared prefix), for a fraction of the compute: task prompts are mostly prefix.
    """

    def __init__(self, model: nn.Module, share_prefix: bool = True):
        super().__init__()
        self.model = model
        self.share_prefix = share_prefix

    def causal_lm(self):
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def forward(self, input_ids, attention_mask, labels):
        lm = self.causal_lm()
        hidden, start = decoder_states(lm.get_decoder(), input_ids, attention_mask, labels, self.share_prefix)
        targets = labels[:, start + 1:]
        keep = targets != IGNORE
        logits = lm.get_output_embeddings()(hidden[:, :-1][keep]).float()
        return F.cross_entropy(logits, targets[keep], reduction="sum"), keep.sum()


MIN_SHARED_PREFIX = 8  # below this, two decoder calls cost more than they save


def decoder_states(decoder, input_ids, attention_mask, labels, share_prefix: bool = True, start: int | None = None):
    """Final hidden states from position `start` on, and `start`: the length of the prefix all rows share,
    run once and continued from its key/value cache (0 when too short to pay off). Pass `start` to reuse
    one split for a second model on the same batch (distillation's teacher)."""
    if start is None:
        start = shared_prefix_length(input_ids, attention_mask, labels) if share_prefix else 0
    if start < MIN_SHARED_PREFIX or input_ids.shape[0] < 2 or decoder.config.is_encoder_decoder:
        return decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state, 0
    prefix = decoder(input_ids=input_ids[:1, :start], use_cache=True)
    cache = output_cache(prefix)
    cache.batch_repeat_interleave(input_ids.shape[0])
    hidden = decoder(input_ids=input_ids[:, start:], attention_mask=attention_mask, use_cache=False,
                     **{cache_kwarg(decoder): cache}).last_hidden_state
    return hidden, start


def make_accelerator(bf16: bool):
    """The run's Accelerator. accelerate keeps one process-wide state and refuses a second Accelerator with
    another precision; a second run in one process (a notebook, the tests on a CPU with bf16) may need one,
    so the old state is dropped first (accelerate has no public call for it; distributed setup is kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="bf16" if bf16 else "no")


def shared_prefix_length(input_ids, attention_mask, labels) -> int:
    """Tokens all rows share at the start, stopping before the first position whose next token is a target."""
    same = (input_ids == input_ids[:1]).all(dim=0) & attention_mask.bool().all(dim=0)
    first_diff = int(same.logical_not().nonzero()[0]) if not same.all() else input_ids.shape[1]
    has_target = (labels[:, 1:] != IGNORE).any(dim=0)
    first_target = int(has_target.nonzero()[0]) if has_target.any() else input_ids.shape[1]
    # hidden state t predicts token t+1: the prefix must end before the position that predicts a target,
    # and keep one token back so every row still has a suffix to run
    return max(0, min(first_diff, first_target, input_ids.shape[1] - 1))


def group_batches(lengths: list[int], batch_size: int, seed: int, epochs: float,
                  by_length: bool = True) -> list[list[int]]:
    """Shuffled batches; `by_length`: of similar-length rows (sorted within windows of 64 batches), almost no padding."""
    rng = random.Random(seed)
    n = len(lengths)
    window = batch_size * 64 if by_length else batch_size
    batches: list[list[int]] = []
    per_epoch = math.ceil(n / batch_size)
    for _ in range(math.ceil(epochs)):
        order = list(range(n))
        rng.shuffle(order)
        epoch_batches = []
        for start in range(0, n, window):
            chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
            epoch_batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(epoch_batches)
        batches += epoch_batches
    return batches[: max(1, round(per_epoch * epochs))]


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def make_optimizer(model: nn.Module, train_cfg):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)


def make_scheduler(optimizer, train_cfg, total_steps: int):
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[train_cfg.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=int(train_cfg.warmup_ratio * total_steps),
                         num_training_steps=total_steps)


def count_params(model: nn.Module) -> tuple[int, int]:
    from tuneforge.quant.bnb import weight_count

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(weight_count(p) for p in model.parameters())
    return trainable, total


# -- checkpoints ------------------------------------------------------------------------------------


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
    import shlex

    from tuneforge import runs

    if fallback is None:
        return None
    line = runs.command_line
    if line and len(line) > 1 and line[1] == fallback.split()[1]:
        return shlex.join([*(a for a in line if not a.startswith("train.resume=")), f"train.resume={checkpoint}"])
    return f"{fallback} train.resume={checkpoint}"
