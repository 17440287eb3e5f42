"""GGUF types written by llama.cpp's own quantizer: K-quants, and any type weighted by task activations.

The `gguf` package encodes F16/Q8_0/Q4_0 in Python but has no K-quant encoder and no importance
weighting. llama.cpp's C quantizer (`llama_model_quantize`, exposed by llama-cpp-python) has both, so
tuneforge writes the model as an F32 GGUF and hands that file over instead of re-implementing K-quants.

The importance matrix is what llama.cpp's `llama-imatrix` tool computes (the mean square of every input
feature of every weight matrix) taken here in PyTorch on the task's own training conversations, so a
quantized model spends its precision on the features the task's prompts use. On SmolLM2-135M it cost
accuracy on both sentiment tasks measured (docs/compression.md), so it is opt-in (gguf.imatrix_rows).
"""

from __future__ import annotations

import ctypes
import os
import signal
import tempfile
import threading
from collections import Counter
from pathlib import Path

import numpy as np

from tuneforge.errors import UserError
from tuneforge.fileio import atomic_file

# tuneforge name -> llama.cpp file type (llama_ftype). The K-mixes choose a type per tensor themselves.
LLAMACPP_TYPES = {"q4_k_m": "Q4_K_M", "q5_k_m": "Q5_K_M", "q6_k": "Q6_K", "q4_0": "Q4_0"}
K_QUANTS = ("q4_k_m", "q5_k_m", "q6_k")
# Types whose llama.cpp encoder uses an imatrix (ggml's Q8_0 encoder ignores one; F16/F32 are not quantized).
WEIGHTABLE = ("q4_0", *K_QUANTS)


def needs_llamacpp_quantizer(qtype: str, weighted: bool) -> bool:
    """K-quants always; Q4_0 when an importance matrix weights it (the Python encoder has none)."""
    return qtype in K_QUANTS or (weighted and qtype in LLAMACPP_TYPES)


def gguf_tensor_names(model) -> dict[str, str]:
    """HF module name of every decoder-block linear layer -> its GGUF weight name."""
    from tuneforge.compress.prune import prunable_linears
    from tuneforge.compress.quant.gguf_writer import gguf_namer

    name_of = gguf_namer(model.config)
    found = {n: name_of(n + ".weight") for n in prunable_linears(model)}
    return {n: g[1] for n, g in found.items() if g}


def activation_importance(model, batches) -> dict[str, np.ndarray]:
    """Mean square of each input feature of each block linear layer over the real tokens of `batches`.

    Keyed by GGUF tensor name (blk.N.attn_q.weight ...), as llama.cpp's imatrix is. The output head is left
    out: tuneforge writes Llama models whose head is tied to the embedding, which llama.cpp reads by row.
    """
    import torch
    from tqdm import tqdm

    from tuneforge.compress.blocks import model_device, run_body

    names = gguf_tensor_names(model)
    if not names:
        raise UserError("no decoder-block linear layers found to weight: importance needs a Llama-style model")
    modules = dict(model.named_modules())
    sums = {n: torch.zeros(modules[n].in_features, dtype=torch.float64, device=model_device(model)) for n in names}
    counts = dict.fromkeys(names, 0)
    current: dict = {}

    def hook(name):
        def fn(module, args):
            x = args[0][current["mask"]].double()  # (real tokens, in_features)
            sums[name] += (x * x).sum(0)
            counts[name] += x.shape[0]
        return fn

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            for batch in tqdm(batches, desc="importance (imatrix)", unit="batch"):
                current["mask"] = batch["attention_mask"].to(model_device(model)).bool()
                run_body(model, batch)  # the blocks only: the head's full-vocabulary logits are not needed
    finally:
        for handle in handles:
            handle.remove()
    return {names[n]: (sums[n] / max(counts[n], 1)).float().cpu().numpy() for n in names}


def llamacpp_quantize(source: Path, target: Path, qtype: str, *, importance: dict[str, np.ndarray] | None = None,
                      threads: int | None = None) -> Path:
    """Quantize the F32/F16 GGUF `source` into `target` (written under a temporary name, renamed when done)."""
    from tuneforge.compress.quant.llamacpp import import_llama_cpp

    llama_cpp = import_llama_cpp()
    if qtype not in LLAMACPP_TYPES:
        raise UserError(f"GGUF type '{qtype}' is not one llama.cpp's quantizer writes here ({', '.join(LLAMACPP_TYPES)})")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{LLAMACPP_TYPES[qtype]}")
    params.nthread = threads or os.cpu_count() or 1
    keep = []  # the C side only borrows these buffers
    if importance:
        entries = (llama_cpp.llama_model_imatrix_data * (len(importance) + 1))()
        for i, (name, values) in enumerate(importance.items()):
            values = np.ascontiguousarray(values, dtype=np.float32)
            key = name.encode()
            keep += [values, key]
            entries[i].name, entries[i].size = key, values.size
            entries[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[len(importance)].name = None  # the array ends at a null name
        keep.append(entries)
        params.imatrix = ctypes.cast(entries, type(params.imatrix))
    from llama_cpp._logger import llama_log_callback as default_log  # llama-cpp-python's own, put back after

    log: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):  # one line per tensor otherwise; kept to explain a failure
        log.append(text.decode("utf-8", errors="replace"))

    # A Ctrl-C during the C call would surface inside `collect`, where ctypes swallows it and the run went on;
    # it is held until the call returns instead (llama.cpp's quantizer cannot be cancelled midway).
    stop: list[int] = []
    main = threading.current_thread() is threading.main_thread()  # only the main thread may set a handler
    with atomic_file(target) as tmp:
        previous = signal.signal(signal.SIGINT, lambda *_: stop.append(1)) if main else None
        try:
            llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
            print(f"llama.cpp quantizer: {source.name} -> {LLAMACPP_TYPES[qtype]}"
                  + (f", weighted by {len(importance)} importance vectors" if importance else "")
                  + " (Ctrl-C stops once it returns)")
            failed = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params)) != 0
            if stop:
                raise KeyboardInterrupt
            if failed:
                tail = "".join(log).strip().splitlines()[-5:]
                raise UserError(f"llama.cpp could not quantize {source} to {LLAMACPP_TYPES[qtype]}:\n  "
                                + "\n  ".join(tail))
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
            llama_cpp.llama_log_set(default_log, ctypes.c_void_p(0))
    return target


def k_quant_fallback_note(model, qtype: str) -> str | None:
    """Why a K-quant file holds other types: llama.cpp stores rows not a multiple of 256 in a legacy type."""
    if qtype not in K_QUANTS:
        return None
    modules = dict(model.named_modules())
    widths = [modules[n].in_features for n in gguf_tensor_names(model)]
    narrow = sorted({w for w in widths if w % 256})
    if not narrow:
        return None
    count = sum(w % 256 != 0 for w in widths)
    return (f"{count} of {len(widths)} block weight matrices have rows of {', '.join(map(str, narrow))} values, not a "
            f"multiple of the 256 a K-quant block needs: llama.cpp stored them in a legacy type instead (the "
            f"report counts matrices by type); every block matrix gets its K-quant only where a model's hidden "
            f"and intermediate sizes are both multiples of 256")


def matrix_types(path: str | Path) -> dict[str, int]:
    """How many 2-D tensors of the GGUF are stored in each type: shows where a K-quant fell back."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return dict(Counter(t.tensor_type.name for t in reader.tensors if len([d for d in t.shape if d > 1]) >= 2))


def types_line(types: dict[str, int]) -> str:
    """'Q4_K 16, Q5_0 166, ...' for a report."""
    return ", ".join(f"{k} {v}" for k, v in sorted(types.items()))


def write_any_gguf(model, tok, path: Path, qtype: str, *, pre_tokenizer: str | None,
                   importance: dict[str, np.ndarray] | None = None, threads: int | None = None) -> Path:
    """The GGUF of `qtype`: tuneforge's Python writer where it can, else an F32 file handed to llama.cpp."""
    from tuneforge.compress.quant.gguf_writer import write_gguf

    path = Path(path)
    if not needs_llamacpp_quantizer(qtype, bool(importance)):
        return write_gguf(model, tok, path, qtype, pre_tokenizer=pre_tokenizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".f32-") as tmp:  # removed on success and on failure
        f32 = write_gguf(model, tok, Path(tmp) / "model-f32.gguf", "f32", pre_tokenizer=pre_tokenizer)
        return llamacpp_quantize(f32, path, qtype, importance=importance, threads=threads)
