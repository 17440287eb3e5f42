"""What keeps old skills while a stage trains: replayed rows, a penalty on moving the weights (L2-SP, EWC), and a
distillation term towards the previous stage's model. Each wraps the loss module that training.loop.fit runs;
fit divides a batch's summed loss by its target count, so a penalty is added as penalty * count."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch import nn


def replay_rows(earlier: Sequence[list[dict]], new_rows: int, ratio: float, seed: int) -> list[tuple[int, dict]]:
    """(stage index, row) pairs drawn from earlier stages' training rows so that they make up `ratio` of the mixed
    set: ratio/(1-ratio) replayed rows per new row, drawn uniformly (seeded) from all earlier rows together."""
    pool = [(k, row) for k, rows in enumerate(earlier) for row in rows]
    if not pool or ratio <= 0:
        return []
    want = min(len(pool), round(new_rows * ratio / (1 - ratio)))
    return random.Random(seed).sample(pool, want)


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights now, detached: an anchor for L2-SP or EWC."""
    return {n: p.detach().clone() for n, p in trainable(model).items()}


def l2_penalty(model: nn.Module, anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    """L2-SP: the summed squared distance of the trainable weights from `anchor`."""
    params = trainable(model)
    terms = [((params[n] - a.to(params[n].device)) ** 2).sum() for n, a in anchor.items() if n in params]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def ewc_penalty(model: nn.Module, anchors: Sequence[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]) -> torch.Tensor:
    """EWC: sum over earlier stages of sum_i F_i (theta_i - theta*_i)^2, with each stage's diagonal Fisher F and its
    weights theta* (Kirkpatrick et al. 2017); zero at every anchor, growing as the weights move where F is large."""
    params = trainable(model)
    terms = [(fisher[n].to(params[n].device) * (params[n] - theta[n].to(params[n].device)) ** 2).sum()
             for fisher, theta in anchors for n in fisher if n in params]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def diagonal_fisher(model: nn.Module, loss_module: nn.Module, batches: Sequence[dict]) -> dict[str, torch.Tensor]:
    """The empirical Fisher's diagonal: the squared gradient of each row's mean target loss, summed over `batches`
    (one row each) for every trainable weight, then scaled to a mean of 1."""
    params = trainable(model)
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.train()
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss_sum, count = loss_module(**batch)
        (loss_sum / max(int(count), 1)).backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach().float() ** 2
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    # scaled to a mean of 1 over all entries: the penalty's size then depends on how far the weights move and on
    # where they matter, not on the loss's scale, so ewc.weight reads like l2.weight
    mean = torch.cat([f.flatten() for f in fisher.values()]).mean() if fisher else torch.tensor(1.0)
    return {n: f / mean.clamp_min(1e-30) for n, f in fisher.items()}


class PenalisedLoss(nn.Module):
    """The stage's own loss plus weight * penalty(model), the penalty counted once per optimizer step."""

    def __init__(self, inner: nn.Module, model: nn.Module, penalty, weight: float):
        super().__init__()
        self.inner = inner
        self.frozen = (model, penalty)  # a tuple: the model is already inside `inner`; not registered twice
        self.weight = weight

    def forward(self, input_ids, attention_mask, labels):
        loss_sum, count = self.inner(input_ids, attention_mask, labels)
        model, penalty = self.frozen
        if self.weight:
            loss_sum = loss_sum + self.weight * penalty(model).to(loss_sum.dtype) * count
        return loss_sum, count


class ReplayDistillLoss(nn.Module):
    """Self-distillation: replayed rows are trained towards the previous stage's model (distill's KD + CE mix),
    the new stage's rows by plain cross-entropy on their answers."""

    def __init__(self, new_loss: nn.Module, replay_loss: nn.Module):
        super().__init__()
        self.new_loss = new_loss
        self.replay_loss = replay_loss

    def forward(self, input_ids, attention_mask, labels, replay):
        total, count = None, 0
        for loss, rows in ((self.new_loss, ~replay), (self.replay_loss, replay)):
            if rows.any():
                part, n = loss(input_ids[rows], attention_mask[rows], labels[rows])
                total = part if total is None else total + part
                count += int(n)
        return total, count


def collate_with_replay(collate):
    """A Setup.collate that also carries which rows were replayed (examples marked `replay`)."""
    def collate_rows(examples: list[dict], pad_id: int) -> dict:
        batch = collate(examples, pad_id)
        batch["replay"] = torch.tensor([bool(e.get("replay")) for e in examples])
        return batch
    return collate_rows
