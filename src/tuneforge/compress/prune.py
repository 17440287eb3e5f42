"""Pruning masks for the linear layers inside transformer blocks: magnitude, Wanda and N:M.

A mask is a bool tensor shaped like the weight, True where the weight is kept. Embeddings, the LM head and
norms are never pruned (the usual practice: they are small or shared, and pruning them hurts most).

- magnitude: score |W|; pruned per matrix (the smallest fraction of the whole matrix) or per output row.
- Wanda (Sun et al. 2023): score |W_ij| · ||X_j||₂ where X_j is input feature j over the calibration tokens;
  pruned per output row, block by block, so later blocks are calibrated on the already-pruned earlier ones.
- N:M: in every group of M consecutive input weights of a row, keep the N highest scores (2:4 is what
  sparse tensor cores accelerate); the score is |W| or the Wanda score.
- Wanda + refit (optional): after the mask is chosen, each row's kept weights are re-fitted by least squares
  so the layer's output on the calibration inputs moves as little as possible (the weight update of
  SparseGPT, Frantar & Alistarh 2023, solved exactly for Wanda's mask). The mask and sparsity do not change.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn
from tqdm import tqdm

from tuneforge.compress.blocks import capture_block_inputs, decoder_blocks, run_block
from tuneforge.errors import UserError


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """'unstructured' → None; '2:4' → (2, 4)."""
    if pattern == "unstructured":
        return None
    found = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", pattern)
    if not found or not 0 < int(found.group(1)) < int(found.group(2)):
        raise UserError(f"prune.pattern '{pattern}' must be 'unstructured' or N:M with 0 < N < M, e.g. 2:4")
    return int(found.group(1)), int(found.group(2))


def prunable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Linear layers inside the transformer blocks, by their full module name."""
    parent, attr, blocks = decoder_blocks(model)
    prefix = next(name for name, m in model.named_modules() if m is blocks)
    return {
        f"{prefix}.{name}": module
        for name, module in blocks.named_modules()
        if isinstance(module, nn.Linear)
    }


# -- masks from scores --------------------------------------------------------------------------------


def mask_from_scores(scores: torch.Tensor, sparsity: float, *, scope: str = "row", nm: tuple[int, int] | None = None):
    """Keep-mask that drops the lowest scores: exactly floor(sparsity·n) per matrix or per row, or M−N per group."""
    if nm is not None:
        n, m = nm
        rows, cols = scores.shape
        if cols % m:
            raise UserError(f"N:M pruning needs input width divisible by {m}; a matrix has {cols} columns")
        groups = scores.reshape(rows, cols // m, m)
        drop = torch.topk(groups, m - n, dim=-1, largest=False).indices
        mask = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False)
        return mask.reshape(rows, cols)
    if not 0 <= sparsity < 1:
        raise UserError(f"prune.sparsity must be in [0, 1), got {sparsity}")
    mask = torch.ones_like(scores, dtype=torch.bool)
    if scope == "matrix":
        k = int(sparsity * scores.numel())
        if k:
            mask.view(-1)[torch.topk(scores.flatten(), k, largest=False).indices] = False
        return mask
    if scope == "row":
        k = int(sparsity * scores.shape[1])
        if k:
            mask.scatter_(1, torch.topk(scores, k, dim=1, largest=False).indices, False)
        return mask
    raise UserError(f"prune.scope '{scope}' must be 'matrix' or 'row'")


def magnitude_masks(model: nn.Module, sparsity: float, *, scope: str = "matrix", nm=None) -> dict[str, torch.Tensor]:
    return {
        name: mask_from_scores(lin.weight.detach().float().abs(), sparsity, scope=scope, nm=nm)
        for name, lin in prunable_linears(model).items()
    }


@torch.no_grad()
def refit_kept_weights(weight: torch.Tensor, mask: torch.Tensor, gram: torch.Tensor, *, damp: float = 0.01,
                       rows_per_solve: int = 64) -> torch.Tensor:
    """Kept weights that best reproduce the dense layer's output on the calibration inputs; pruned ones are 0.

    With H = XᵀX over the calibration tokens, row w and kept set K, minimise ‖X_K v − X w‖² + λ‖v − w_K‖²:
    (H_KK + λI) v = (H w)_K + λ w_K, where λ = damp · mean(diag H) keeps the solve well-posed when a
    feature is (nearly) silent. Every row keeps the same number of weights (per-row or N:M masks), so rows
    are solved in batches of `rows_per_solve` Cholesky systems.
    """
    kept = mask.sum(1)
    if not bool((kept == kept[0]).all()):
        raise UserError("refitting pruned weights needs the same number of kept weights in every row (per-row or N:M masks)")
    w = weight.float()
    h = gram.float()
    lam = damp * float(h.diagonal().mean()) or damp
    target = w @ h  # row i: (H w_i)ᵀ
    eye = torch.eye(int(kept[0]), device=w.device)
    idx_all = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, : int(kept[0])]  # kept columns, in order
    out = torch.zeros_like(w)
    for start in range(0, w.shape[0], rows_per_solve):
        rows = slice(start, start + rows_per_solve)
        idx = idx_all[rows]
        h_kk = h[idx[:, :, None], idx[:, None, :]] + lam * eye
        rhs = target[rows].gather(1, idx) + lam * w[rows].gather(1, idx)
        factor, info = torch.linalg.cholesky_ex(h_kk)
        if bool(info.any()):  # fp32 lost positive-definiteness: redo this batch in fp64
            factor = torch.linalg.cholesky(h_kk.double()).float()
        out[rows].scatter_(1, idx, torch.cholesky_solve(rhs.unsqueeze(-1), factor).squeeze(-1))
    return out.to(weight.dtype)


@torch.no_grad()
def wanda_prune(model: nn.Module, batches: Sequence[dict], sparsity: float, *, nm=None,
                refit: bool = False) -> dict[str, torch.Tensor]:
    """Prune in place with Wanda scores, one block at a time; returns the masks.

    For each block: hooks sum the squared inputs of its linear layers over the real tokens (the whole XᵀX
    when `refit`), the block's weights are pruned per output row (and the kept ones refitted), then the
    block is run again (pruned) to give the next block its input.
    """
    _, _, blocks = decoder_blocks(model)
    names = {id(m): n for n, m in prunable_linears(model).items()}
    hidden, block_kwargs = capture_block_inputs(model, batches)
    token_masks = [b["attention_mask"].bool().to(hidden[0].device) for b in batches]
    masks: dict[str, torch.Tensor] = {}
    stats: dict[int, torch.Tensor] = {}  # per linear: Σx² per input feature, or XᵀX when refitting
    current: dict = {}

    def hook(module, args):
        x = args[0][current["mask"]].float()  # (real tokens, in_features)
        stats[id(module)] += x.T @ x if refit else (x * x).sum(0)

    for index, block in enumerate(tqdm(blocks, desc="wanda", unit="block")):
        linears = [m for m in block.modules() if isinstance(m, nn.Linear)]
        stats.clear()
        stats.update({id(m): torch.zeros((m.in_features,) * (2 if refit else 1), device=m.weight.device)
                      for m in linears})
        handles = [m.register_forward_pre_hook(hook) for m in linears]
        try:
            for b, h in enumerate(hidden):
                current["mask"] = token_masks[b]
                run_block(block, h, block_kwargs[index][b])
        finally:
            for handle in handles:
                handle.remove()
        for lin in linears:
            sq_norm = stats[id(lin)].diagonal() if refit else stats[id(lin)]
            scores = lin.weight.float().abs() * sq_norm.sqrt()[None, :]
            mask = mask_from_scores(scores, sparsity, scope="row", nm=nm)
            if refit:
                lin.weight.copy_(refit_kept_weights(lin.weight, mask, stats[id(lin)]))
            else:
                lin.weight.mul_(mask.to(lin.weight.dtype))
            masks[names[id(lin)]] = mask
        hidden = [run_block(block, h, block_kwargs[index][b]) for b, h in enumerate(hidden)]
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        weight = modules[name].weight
        weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))


def masks_from_zeros(model: nn.Module) -> dict[str, torch.Tensor]:
    """Recover the masks of a pruned model (e.g. after reloading it): kept = non-zero."""
    return {name: lin.weight.detach() != 0 for name, lin in prunable_linears(model).items()}


# -- reporting ----------------------------------------------------------------------------------------


def sparsity_report(model: nn.Module) -> dict:
    """Fraction of zeros per prunable matrix, over the prunable matrices, and over all parameters."""
    per_matrix = {}
    zeros = total = 0
    for name, lin in prunable_linears(model).items():
        z = int((lin.weight == 0).sum())
        per_matrix[name] = z / lin.weight.numel()
        zeros += z
        total += lin.weight.numel()
    params = {id(p): p for p in model.parameters()}.values()
    all_total = sum(p.numel() for p in params)
    all_nonzero = sum(int(torch.count_nonzero(p)) for p in params)
    return {
        "prunable_sparsity": zeros / total if total else 0.0,
        "parameters": all_total,
        "nonzero_parameters": all_nonzero,
        "overall_sparsity": 1 - all_nonzero / all_total if all_total else 0.0,
        "per_matrix": per_matrix,
    }


def check_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """True if every group of m consecutive input weights of every row has at most n non-zeros."""
    rows, cols = weight.shape
    return bool(((weight.reshape(rows, cols // m, m) != 0).sum(-1) <= n).all())
