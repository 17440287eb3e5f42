"""Transformer blocks of a causal LM: find them, keep a subset, replay them one by one on calibration data.

Works on Hugging Face decoder models whose blocks sit in one nn.ModuleList of length
`config.num_hidden_layers` (Llama, Mistral, Qwen2, Phi, Gemma, GPT-2 ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from tuneforge.errors import UserError


def decoder_blocks(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """(parent module, attribute name, the ModuleList of blocks)."""
    n = getattr(model.config, "num_hidden_layers", None)
    for parent in model.modules():
        for attr, child in parent.named_children():
            if isinstance(child, nn.ModuleList) and len(child) == n and len({type(b) for b in child}) == 1:
                return parent, attr, child
    raise UserError(
        f"{type(model).__name__}: no list of {n} transformer blocks found; "
        "pruning and block-based students support decoder models with config.num_hidden_layers blocks"
    )


def keep_blocks(model: nn.Module, keep: Sequence[int]) -> nn.Module:
    """Keep only the blocks at `keep` (in model order), in place; the config and cache indices follow."""
    parent, attr, blocks = decoder_blocks(model)
    keep = sorted(set(int(i) for i in keep))
    if not keep or keep[0] < 0 or keep[-1] >= len(blocks):
        raise UserError(f"blocks to keep {keep} must be a non-empty subset of 0..{len(blocks) - 1}")
    kept = nn.ModuleList([blocks[i] for i in keep])
    # The KV cache is indexed by layer_idx: renumber so the kept blocks use slots 0..k-1.
    for new_idx, block in enumerate(kept):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    setattr(parent, attr, kept)
    model.config.num_hidden_layers = len(keep)
    layer_types = getattr(model.config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == len(blocks):
        model.config.layer_types = [layer_types[i] for i in keep]
    return model


def remove_blocks(model: nn.Module, drop: Iterable[int]) -> nn.Module:
    _, _, blocks = decoder_blocks(model)
    drop = set(int(i) for i in drop)
    return keep_blocks(model, [i for i in range(len(blocks)) if i not in drop])


def _hidden_of(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _first_output(out):
    return out[0] if isinstance(out, tuple | list) else out


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def body(model: nn.Module) -> nn.Module:
    """The decoder without its LM head (model.model for Llama): its output is the last hidden state."""
    return getattr(model, model.base_model_prefix, model)


def run_body(model: nn.Module, batch: dict):
    """Forward through the blocks only: hooks need the block inputs, not full-vocabulary logits."""
    device = model_device(model)
    return body(model)(
        input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device), use_cache=False
    )


@torch.no_grad()
def capture_block_inputs(model: nn.Module, batches: Sequence[dict]) -> tuple[list, list[list[dict]]]:
    """Run the model once per batch and record block 0's input hidden states and every block's keyword
    arguments (attention mask, rotary embeddings, ...), so blocks can then be replayed one at a time."""
    _, _, blocks = decoder_blocks(model)
    first_inputs: list[torch.Tensor] = []
    block_kwargs: list[list[dict]] = [[] for _ in blocks]
    handles = []

    def recorder(index):
        def hook(_module, args, kwargs):
            if index == 0:
                first_inputs.append(_hidden_of(args, kwargs).detach())
            block_kwargs[index].append({k: v for k, v in kwargs.items() if k != "hidden_states"})

        return hook

    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(recorder(i), with_kwargs=True))
    try:
        for batch in batches:
            run_body(model, batch)
    finally:
        for h in handles:
            h.remove()
    return first_inputs, block_kwargs


@torch.no_grad()
def run_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    return _first_output(block(hidden, **kwargs))


@torch.no_grad()
def block_importance(model: nn.Module, batches: Sequence[dict], *, desc: str = "block importance") -> list[float]:
    """Per block: 1 − cosine(input, output hidden state), averaged over the real (non-pad) tokens.

    A block whose output is nearly its input changes little and is the cheapest to remove."""
    _, _, blocks = decoder_blocks(model)
    sums = torch.zeros(len(blocks), dtype=torch.float64)
    count = 0
    current: dict = {}
    handles = []

    def pre(_m, args, kwargs):
        current["in"] = _hidden_of(args, kwargs)

    def post(index):
        def hook(_m, _args, _kwargs, out):
            h_in = current["in"].float()[current["mask"]]
            h_out = _first_output(out).float()[current["mask"]]
            sums[index] += (1 - torch.nn.functional.cosine_similarity(h_in, h_out, dim=-1)).double().sum()

        return hook

    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(block.register_forward_hook(post(i), with_kwargs=True))
    device = model_device(model)
    try:
        for batch in tqdm(batches, desc=desc, unit="batch", leave=False):
            current["mask"] = batch["attention_mask"].to(device).bool()
            count += int(current["mask"].sum())
            run_body(model, batch)
    finally:
        for h in handles:
            h.remove()
    return (sums / max(count, 1)).tolist()


def least_important(importance: Sequence[float], k: int) -> list[int]:
    """Indices of the k blocks with the lowest importance (ties: the later block goes first)."""
    order = sorted(range(len(importance)), key=lambda i: (importance[i], -i))
    return sorted(order[:k])
