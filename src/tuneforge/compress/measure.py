"""What the comparison table measures: parameters, non-zeros, size on disk, prefill and decode tokens/s.

Speed is one stream, greedy, on this machine: prefill = prompt tokens / time of the forward pass over the
prompt; decode = generated tokens / time of the one-token steps after it (KV cache on). The best of
`repeats` runs is kept, which is the least disturbed by other processes on a shared machine.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def weights_size(path: str | Path) -> int:
    """Bytes of weight files: a file itself, or the weight files in a folder (tokenizer files left out)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))


def stored_dtypes(path: str | Path) -> str | None:
    """The dtypes a folder's safetensors files store, most bytes first ("bf16", "i8+bf16"): the size column's
    cause, which the dtype a model runs in does not show. None where there are no safetensors files."""
    by_dtype: dict[str, int] = {}
    for file in sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []:
        with open(file, "rb") as f:  # the header alone (8-byte length, JSON): exact byte ranges, no dtype-size table
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        for name, info in header.items():
            if name != "__metadata__":
                start, end = info["data_offsets"]
                by_dtype[info["dtype"]] = by_dtype.get(info["dtype"], 0) + end - start
    ranked = sorted(by_dtype, key=by_dtype.get, reverse=True)
    return "+".join(d.lower() for d in ranked) or None


def count_parameters(model: torch.nn.Module) -> tuple[int, int | None]:
    """(parameters, non-zero parameters); tied weights count once. Non-zeros are None for quantized weights
    (torchao tensor subclasses, bitsandbytes 4-bit and 8-bit) that cannot be counted element-wise."""
    from tuneforge.models.bnb import is_bnb_quantized, weight_count

    params = list({id(p): p for p in model.parameters()}.values())
    total = sum(weight_count(p) for p in params)
    if any(is_bnb_quantized(p) for p in params):  # their zeros are rounding, not pruning
        return total, None
    try:
        nonzero = sum(int(torch.count_nonzero(p.detach())) for p in params)
    except (NotImplementedError, RuntimeError, TypeError):
        nonzero = None
    return total, nonzero


def speed_prompt_ids(tok, prompt_tokens: int) -> list[int]:
    """A fixed, natural-text prompt of exactly `prompt_tokens` tokens, the same for every model."""
    text = ("The film was a quiet surprise: patient, funny and warm, with a cast that never oversells a scene. " * 64)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return ids[:prompt_tokens]


@torch.inference_mode()
def hf_speed(model, prompt_ids: list[int], new_tokens: int = 64, repeats: int = 2) -> dict:
    """Greedy prefill + decode with the KV cache, timed separately."""
    import inspect

    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)
    # transformers ≥ 5.24 names the KV cache `cache` (past_key_values is deprecated)
    params = inspect.signature(model.forward).parameters
    key = "cache" if "cache" in params else "past_key_values"
    # as generate() does: the prompt's LM-head logits are needed at its last position only
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    best_prefill = best_decode = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, **last_only)
        t1 = time.perf_counter()
        token = out.logits[:, -1:].argmax(-1)
        for _ in range(new_tokens):
            out = model(input_ids=token, use_cache=True, **{key: getattr(out, key)})
            token = out.logits[:, -1:].argmax(-1)
        t2 = time.perf_counter()
        best_prefill, best_decode = min(best_prefill, t1 - t0), min(best_decode, t2 - t1)
    return {"prefill_tok_s": len(prompt_ids) / best_prefill, "decode_tok_s": new_tokens / best_decode}


def gguf_speed(llm, prompt_ids: list[int], new_tokens: int = 64, repeats: int = 2) -> dict:
    """The same measurement through llama.cpp (llama-cpp-python's low-level eval/sample)."""
    best_prefill = best_decode = float("inf")
    for _ in range(repeats):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt_ids)
        t1 = time.perf_counter()
        for _ in range(new_tokens):
            token = llm.sample(temp=0.0)
            llm.eval([token])
        t2 = time.perf_counter()
        best_prefill, best_decode = min(best_prefill, t1 - t0), min(best_decode, t2 - t1)
    return {"prefill_tok_s": len(prompt_ids) / best_prefill, "decode_tok_s": new_tokens / best_decode}


def gguf_storage(path: str | Path) -> tuple[int, list[str]]:
    """(parameters, tensor types holding the most bytes first): a K-quant file is a mix of types."""
    from collections import Counter

    from gguf import GGUFReader

    tensors = GGUFReader(str(path)).tensors
    held = Counter()
    for t in tensors:
        held[t.tensor_type.name.lower()] += int(t.n_bytes)
    return sum(int(t.n_elements) for t in tensors), [name for name, _ in held.most_common()]
