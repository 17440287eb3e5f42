"""Batched greedy generation for evaluation: left padding, prompts sorted by length to waste little."""

from __future__ import annotations

import torch
from tqdm import tqdm

from tuneforge.data.encode import encode_prompt


def stop_token_ids(tok) -> list[int]:
    ids = {tok.eos_token_id}
    for name in ("<|im_end|>", "<|eot_id|>", "<|end|>", "</s>"):
        tid = tok.convert_tokens_to_ids(name) if name in tok.get_vocab() else None
        if tid is not None:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


@torch.inference_mode()
def generate(model, tok, conversations: list[list[dict]], *, max_new_tokens: int, batch_size: int = 16,
             desc: str | None = None, max_prompt_tokens: int | None = None) -> list[str]:
    """Greedy answers, one per conversation (each ends with a user turn)."""
    prompts = [encode_prompt(tok, conv) for conv in conversations]
    if max_prompt_tokens:
        prompts = [p[-max_prompt_tokens:] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    outputs: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    stops = stop_token_ids(tok)
    bar = tqdm(total=len(prompts), desc=desc or "generating", unit="ex", leave=False)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            p = prompts[i]
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=pad, eos_token_id=stops,
        )
        for row, i in enumerate(idx):
            outputs[i] = tok.decode(out[row, width:], skip_special_tokens=True).strip()
        bar.update(len(idx))
    bar.close()
    return outputs
