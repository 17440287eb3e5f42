"""Recovery LoRA that keeps pruned weights at exactly zero.

A plain LoRA adds a dense delta B·A to every weight; merging it would refill the pruned positions, and
re-applying the mask after merging throws away part of what was trained (the model you trained is not the
model you ship). Here the delta is masked inside the forward pass instead:

    W_eff = (W + (alpha / r) · B·A) ⊙ M

via torch.nn.utils.parametrize, so training sees exactly the sparse weight that is saved; merging just
writes W_eff into the weight. Pruned positions get zero gradient through ⊙ M and stay zero. Without a mask
(block removal, distilled students) it is an ordinary weight-space LoRA.

The price: the weight gradient of each adapted matrix is formed densely (about a third more compute per
step than an activation-space LoRA), which is small on models of this size.

Since that dense gradient is formed anyway, training the kept weights themselves (`add_masked_weights`,
W_eff = W ⊙ M with W trainable) costs about the same compute per step and only adds the optimizer's state:
more capacity than rank r for the recovery, as distill's students train their blocks.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize


class MaskedWeight(nn.Module):
    """Parametrization: weight ↦ weight ⊙ mask, the weight itself trained; pruned positions get zero gradient."""

    def __init__(self, mask: torch.Tensor | None, device=None):
        super().__init__()
        if mask is not None:
            self.register_buffer("mask", mask.to(device=device, dtype=torch.bool), persistent=False)
        else:
            self.mask = None

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # times the bool buffer itself: backward keeps it, not a float copy of every mask per step (4 bytes per
        # block weight); torch.where would keep only the mask too but runs ~9x slower on CPU
        return weight * self.mask if self.mask is not None else weight


class MaskedLoRADelta(MaskedWeight):
    """Parametrization: weight ↦ (weight + scale·B·A) ⊙ mask. B starts at zero, so training starts from W."""

    def __init__(self, out_features: int, in_features: int, r: int, alpha: float, mask: torch.Tensor | None,
                 dtype=torch.float32, device=None):
        super().__init__(mask, device=device)
        self.scale = alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, in_features, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, dtype=dtype, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # one fused weight + scale·B·A: no separate dense delta and scaled copy per matrix per step
        dtype = weight.dtype
        return super().forward(torch.addmm(weight, self.lora_B.to(dtype), self.lora_A.to(dtype), alpha=self.scale))


def target_linears(model: nn.Module, names: dict[str, nn.Linear], target_modules: str | list[str]) -> dict[str, nn.Linear]:
    if target_modules == "all-linear":
        return names
    wanted = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    return {n: m for n, m in names.items() if n.rsplit(".", 1)[-1] in wanted}


def _parametrize_frozen(model: nn.Module, linears: dict[str, nn.Linear], masks: dict[str, torch.Tensor] | None,
                        make) -> list[nn.Module]:
    """Freeze the whole model; register make(linear, its mask or None) as each linear's weight parametrization."""
    for p in model.parameters():
        p.requires_grad_(False)
    parts = []
    for name, lin in linears.items():
        parts.append(make(lin, masks.get(name) if masks else None))
        parametrize.register_parametrization(lin, "weight", parts[-1])
    return parts


def add_masked_lora(model: nn.Module, linears: dict[str, nn.Linear], masks: dict[str, torch.Tensor] | None, *,
                    r: int, alpha: float) -> list[nn.Parameter]:
    """Freeze the whole model, attach a masked LoRA to each of `linears`; returns the trainable parameters."""
    deltas = _parametrize_frozen(model, linears, masks, lambda lin, mask: MaskedLoRADelta(
        lin.out_features, lin.in_features, r, alpha, mask, device=lin.weight.device))
    return [p for d in deltas for p in (d.lora_A, d.lora_B)]


def add_masked_weights(model: nn.Module, linears: dict[str, nn.Linear], masks: dict[str, torch.Tensor] | None) -> list[nn.Parameter]:
    """Freeze the whole model except the weights of `linears`, trained under their masks; returns them."""
    _parametrize_frozen(model, linears, masks, lambda lin, mask: MaskedWeight(mask, device=lin.weight.device))
    return [lin.parametrizations.weight.original.requires_grad_(True) for lin in linears.values()]


@torch.no_grad()
def merge_masked_lora(model: nn.Module) -> None:
    """Write W_eff into each weight and drop the parametrization: a plain model with the same zeros.
    Serves add_masked_weights too."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            module.weight.requires_grad_(False)  # a merged model is for scoring and saving
