"""Training for pruning recovery and distillation through finetune's own loop (recipes.finetune.fit).

fit() takes a Setup whose `loss_module(input_ids, attention_mask, labels)` returns (summed loss over target
tokens, number of target tokens). Recovery uses finetune's TargetOnlyLoss on the masked-LoRA model;
distillation passes DistillLoss below. Nothing else in the loop changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from tuneforge.compress.blocks import body
from tuneforge.compress.kd import distill_loss
from tuneforge.errors import UserError
from tuneforge.recipes.training import decoder_states, shared_prefix_length


class DistillLoss(nn.Module):
    """Summed ratio·KD + (1 − ratio)·CE over target tokens, from both models' final hidden states."""

    def __init__(self, student: nn.Module, teacher: nn.Module, kd, share_prefix: bool = True):
        super().__init__()
        self.model = student
        self.frozen = (teacher,)  # a tuple: not a registered submodule, so DDP and optimizers never see it
        self.kd = kd
        # KD on every token covers the prompt, so the prefix rows share cannot be skipped
        self.share_prefix = share_prefix and kd.tokens != "all"

    def forward(self, input_ids, attention_mask, labels):
        teacher, kd = self.frozen[0], self.kd
        s_hidden, start = decoder_states(body(self.model), input_ids, attention_mask, labels, self.share_prefix)
        kd_on = None
        if kd.tokens == "all":
            kd_on = attention_mask[:, start:]
        elif kd.tokens == "text":  # the predictions made from each row's own tokens (after the shared prefix)
            # start is that prefix when decoder_states shared it; else find it (a one-row batch has none)
            prefix = start or (shared_prefix_length(input_ids, attention_mask, labels) if input_ids.shape[0] > 1 else 0)
            kd_on = attention_mask.clone()
            kd_on[:, :prefix + 1] = 0  # kd_on marks predicted tokens; token `prefix` is predicted from the prefix
            kd_on = kd_on[:, start:]
        with torch.no_grad():
            t_hidden, _ = decoder_states(body(teacher), input_ids, attention_mask, labels, start=start)
        loss, info = distill_loss(
            s_hidden, t_hidden, labels[:, start:], self.model.get_output_embeddings(), teacher.get_output_embeddings(),
            kind=kd.loss, temperature=kd.temperature, beta=kd.beta, ratio=kd.ratio, chunk_tokens=kd.chunk_tokens,
            kd_on=kd_on,
        )
        return loss * info["targets"], info["targets"]


def encode_rows(tok, task, rows: Sequence[dict], max_len: int, *, answers: Sequence[str] | None = None) -> list[dict]:
    """Training conversations → ids with labels on the assistant turn. With `answers` (sequence-level KD)
    the assistant turn is the teacher's generated text instead of the gold one."""
    from tuneforge.data.encode import encode_conversation
    from tuneforge.recipes.common import truncate_sources

    rows = truncate_sources(task, list(rows), tok, "train")  # as finetune does
    feats = []
    for i, row in enumerate(tqdm(rows, desc="tokenizing", leave=False)):
        conv = task.conversation(row)
        if answers is not None:
            conv = [m for m in conv if m["role"] != "assistant"] + [{"role": "assistant", "content": answers[i]}]
        feats.append(encode_conversation(tok, conv, max_len))
    if not any(any(label != -100 for label in f["labels"]) for f in feats):
        raise UserError("no training example has a target token: check data.train columns and task settings")
    return feats


def train(cfg, task, model: nn.Module, tok, loss_module: nn.Module, examples: list[dict], run_dir: Path,
          dev_rows: list[dict] = (), resume_command: str | None = None) -> dict:
    """Run finetune's loop on `model` (its trainable parameters are those with requires_grad). On Ctrl-C a
    checkpoint is saved; `resume_command` (e.g. "tuneforge prune <config>") is how the user resumes from it."""
    from tuneforge.recipes import training as T
    from tuneforge.recipes.finetune import Setup, fit, use_bf16

    cuda = torch.cuda.is_available()
    bf16 = use_bf16(cfg.train.bf16, "cuda" if cuda else "cpu")
    accelerator = T.make_accelerator(bf16)
    batches = T.group_batches([len(e["input_ids"]) for e in examples], cfg.train.batch_size, cfg.train.seed,
                              cfg.train.epochs, cfg.train.group_by_length)
    usable = len(batches) - len(batches) % cfg.train.grad_accum or len(batches)
    batches = batches[:usable]
    total_steps = max(1, len(batches) // cfg.train.grad_accum)
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    torch.manual_seed(cfg.train.seed)
    model.train()
    optimizer = T.make_optimizer(model, cfg.train)
    scheduler = T.make_scheduler(optimizer, cfg.train, total_steps)
    loss_module, optimizer = accelerator.prepare(loss_module, optimizer)
    trainable, total = T.count_params(model)
    print(f"training {trainable:,} of {total:,} parameters on {len(examples)} rows, {total_steps} steps")
    setup = Setup(cfg, task, accelerator, model, tok, loss_module, optimizer, scheduler, examples, batches,
                  list(dev_rows), run_dir, total_steps, resume_command=resume_command)
    stats = fit(setup)
    model.eval()
    return {**stats, "trainable_params": trainable, "total_params": total, "history": setup.history}
