"""Batched greedy generation for evaluation: left padding, prompts sorted by length to waste little, and the
prompt prefix every row shares (system prompt, instruction, few-shot examples) computed once."""

from __future__ import annotations

import copy
import functools
import inspect

import torch
from tqdm import tqdm

from tuneforge.data.encode import encode_prompt
from tuneforge.models.adapters import base_model


def stop_token_ids(tok) -> list[int]:
    ids = {tok.eos_token_id}
    for name in ("<|im_end|>", "<|eot_id|>", "<|end|>", "</s>"):
        tid = tok.convert_tokens_to_ids(name) if name in tok.get_vocab() else None
        if tid is not None:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


MIN_SHARED_PREFIX = 16  # shorter common prefixes save less than the extra cache copies cost


@functools.cache
def _cache_kwarg_of(decoder_class: type) -> str:
    return "cache" if "cache" in inspect.signature(decoder_class.forward).parameters else "past_key_values"


def cache_kwarg(decoder) -> str:
    """The keyword a decoder takes its KV cache by (transformers 5.2x renamed past_key_values to cache)."""
    return _cache_kwarg_of(type(decoder))


def output_cache(out):
    """The KV cache a forward with use_cache=True returned, under either of its names."""
    return getattr(out, "cache", None) or out.past_key_values


def common_prefix_length(sequences: list[list[int]]) -> int:
    """Leading tokens all sequences share, leaving each at least one token of its own."""
    shortest = min(len(s) for s in sequences)
    n = 0
    while n < shortest - 1 and all(s[n] == sequences[0][n] for s in sequences):
        n += 1
    return n


def prefix_cache(model, prefix: list[int]):
    """The KV cache of `prefix` run once, or None where the model cannot continue from one."""
    lm = base_model(model)
    if len(prefix) < MIN_SHARED_PREFIX or lm.config.is_encoder_decoder:
        return None
    decoder = lm.get_decoder()
    out = decoder(input_ids=torch.tensor([prefix], device=next(model.parameters()).device), use_cache=True)
    return cache_kwarg(decoder), output_cache(out)


@torch.inference_mode()
def generate(model, tok, conversations: list[list[dict]], *, max_new_tokens: int, batch_size: int = 16,
             desc: str | None = None, max_prompt_tokens: int | None = None, share_prefix: bool = True) -> list[str]:
    """Greedy answers, one per conversation (each ends with a user turn)."""
    prompts = [encode_prompt(tok, conv) for conv in conversations]
    if max_prompt_tokens:
        prompts = [p[-max_prompt_tokens:] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    outputs: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    stops = stop_token_ids(tok)
    shared = common_prefix_length(prompts) if share_prefix and len(prompts) > 1 else 0
    cached = prefix_cache(model, prompts[0][:shared]) if shared else None
    if cached is None:
        shared = 0
    bar = tqdm(total=len(prompts), desc=desc or "generating", unit="ex", leave=False)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        # rows are [shared prefix | left padding | own suffix]: the mask hides the padding and positions
        # come from the mask, so each row sees exactly the tokens of its own prompt
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        ids[:, :shared], mask[:, :shared] = torch.tensor(prompts[idx[0]][:shared]), 1
        for row, i in enumerate(idx):
            p = prompts[i][shared:]
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        extra = {}
        if cached:
            cache = copy.deepcopy(cached[1])
            cache.batch_repeat_interleave(len(idx))
            extra[cached[0]] = cache
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=pad, eos_token_id=stops, **extra,
        )
        for row, i in enumerate(idx):
            outputs[i] = tok.decode(out[row, width:], skip_special_tokens=True).strip()
        bar.update(len(idx))
    bar.close()
    return outputs
