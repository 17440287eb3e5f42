"""A PEFT LoRA adapter written as a GGUF LoRA adapter: the file llama.cpp's `llama_adapter_lora_init` applies
to a base GGUF of the same model (llama-cpp-python: `Llama(model_path=BASE, lora_path=ADAPTER)`).

The format is llama.cpp's own (its convert_lora_to_gguf.py writes the same): header `general.type` "adapter",
`general.architecture` "llama", `adapter.type` "lora", `adapter.lora.alpha` (float32); for every adapted weight
two tensors named after the base tensor, `<base GGUF name>.lora_a` (PEFT's lora_A, rank x in) and `.lora_b`
(lora_B, out x rank). llama.cpp adds scale * B (A x) to that weight's product with scale = alpha / rank, the rank
read from each lora_b, so alpha is PEFT's lora_alpha and the adapter holds the same numbers as the PEFT folder.
Two changes only:

- q and k rows are stored in llama.cpp's rotary order in the base GGUF (gguf_writer.llamacpp_rows), so lora_b,
  whose rows are those outputs, is permuted the same way; lora_a (inputs) is not.
- a module whose PEFT scale is not lora_alpha / r (use_rslora: alpha / sqrt(r); alpha_pattern) gets the ratio
  multiplied into its lora_b, since the file has one alpha and llama.cpp always divides by the rank.

What llama.cpp's LoRA cannot hold is refused with the module that holds it: DoRA, LoRA biases, modules trained
in full (modules_to_save, trainable tokens), LoRA on the embedding or the output head, and the PEFT variants
whose forward is not W x + scale B A x.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tuneforge.errors import UserError
from tuneforge.fileio import atomic_file

ADAPTER_TYPES = ("f32", "f16")
PREFIX = "base_model.model."
HEAD = ("the embedding or the output head is adapted (LoRA or trained in full); these GGUF adapters hold LoRA on the "
        "blocks' linear layers")
# adapter_config.json settings whose forward is not W x + scale * B A x (or that add weights the file cannot hold).
UNSUPPORTED_SETTINGS = {
    "use_dora": "DoRA rescales every output of the weight by a learned magnitude",
    "lora_bias": "LoRA biases add a trained bias to lora_B",
    "modules_to_save": "these modules are trained in full, not as a low-rank difference",
    "trainable_token_indices": "trainable tokens replace rows of the embedding",
    "layer_replication": "layer replication changes the model's layers",
    "alora_invocation_tokens": "activated LoRA applies only after its invocation tokens",
    "fan_in_fan_out": "fan_in_fan_out stores transposed (Conv1D) weights",
    "target_parameters": "LoRA on parameters (not on linear modules)",
    "use_qalora": "QA-LoRA pools its inputs",
    "use_bdlora": "block-diagonal LoRA",
    "arrow_config": "Arrow routes between several LoRAs",
    "kasa_config": "KaSA adds singular values",
    "velora_config": "VeLoRA changes the forward",
    "monteclora_config": "MonteCLoRA samples its weights",
}


@dataclass
class LoraTensors:
    """What goes into the file: alpha, and (GGUF base name, lora_a, lora_b) per adapted weight."""

    alpha: float
    pairs: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)
    modules: dict[str, str] = field(default_factory=dict)  # GGUF base name -> PEFT module name
    folded: dict[str, float] = field(default_factory=dict)  # GGUF base name -> factor multiplied into lora_b

    @property
    def ranks(self) -> list[int]:
        return sorted({a.shape[0] for _, a, _ in self.pairs})


def refuse(adapter_dir: Path, module: str | None, why: str) -> UserError:
    where = f" (module {module})" if module else ""
    return UserError(f"adapter {adapter_dir}{where} cannot be written as a llama.cpp GGUF LoRA: {why}; "
                     "export format merged or gguf merges it into the weights instead")


def read_adapter(adapter_dir: str | Path) -> tuple[dict, dict]:
    """(adapter_config.json, {saved tensor name: float32 torch tensor}) of a PEFT adapter folder."""
    import torch
    from peft.utils import load_peft_weights

    from tuneforge.models.adapters import ADAPTER_CONFIG, check_adapter

    folder = check_adapter(adapter_dir)
    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if not any((folder / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise UserError(f"adapter {folder} has no adapter_model.safetensors or adapter_model.bin")
    tensors = load_peft_weights(str(folder), device="cpu")
    return config, {k: v.to(torch.float32) for k, v in tensors.items()}


def peft_scale(config: dict, module: str, rank: int) -> float:
    """PEFT's scaling of `module`: its alpha (alpha_pattern or lora_alpha) over r, or over sqrt(r) with rslora."""
    from peft.utils.other import get_pattern_key

    patterns = config.get("alpha_pattern") or {}
    alpha = patterns.get(get_pattern_key(list(patterns), module), config["lora_alpha"])
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def lora_tensors(adapter_dir: str | Path, base_config) -> LoraTensors:
    """The adapter's tensors under their GGUF names and in llama.cpp's layout; UserError for what cannot be held."""
    import gguf

    from tuneforge.compress.quant.gguf_writer import SUPPORTED_ARCHS, gguf_namer, llamacpp_rows

    adapter_dir = Path(adapter_dir).expanduser()
    config, tensors = read_adapter(adapter_dir)
    if config.get("peft_type", "LORA") != "LORA":
        raise refuse(adapter_dir, None, f"it is a {config.get('peft_type')} adapter, not LoRA")
    if getattr(base_config, "model_type", None) not in SUPPORTED_ARCHS:
        raise refuse(adapter_dir, None, f"its base model is '{getattr(base_config, 'model_type', None)}'; the GGUF "
                                        f"writer handles {', '.join(SUPPORTED_ARCHS)}")
    for key, why in UNSUPPORTED_SETTINGS.items():
        if config.get(key):
            raise refuse(adapter_dir, None, f"{key}={config[key]!r}: {why}")
    if config.get("bias", "none") != "none":
        raise refuse(adapter_dir, None, f"bias={config['bias']!r} trains the biases of the base model")
    alpha = float(config["lora_alpha"])
    if alpha == 0:  # llama.cpp reads alpha 0 as "no alpha" and applies the adapter at scale 1
        raise refuse(adapter_dir, None, "lora_alpha is 0, which llama.cpp reads as scale 1")
    name_of = gguf_namer(base_config)
    modules: dict[str, dict] = {}
    others = []
    for key, tensor in tensors.items():
        name = key.removeprefix(PREFIX)
        part = next((p for p in ("lora_A", "lora_B") if name.endswith(f".{p}.weight")), None)
        if part:
            modules.setdefault(name[: -len(f".{part}.weight")], {})[part] = tensor
        else:
            others.append(name)
    for name in others:  # LoRA on an embedding or the head is saved with the full matrix: name that first
        module = name.rsplit(".", 1)[0].removesuffix(".base_layer")
        found = name_of(module + ".weight")
        if found and found[0] in (gguf.MODEL_TENSOR.TOKEN_EMBD, gguf.MODEL_TENSOR.OUTPUT):
            raise refuse(adapter_dir, module, HEAD)
    if others:
        raise refuse(adapter_dir, others[0].rsplit(".", 1)[0], f"its weight '{others[0]}' is not a LoRA A/B matrix "
                                                             "(a module trained in full, a bias, a magnitude)")
    out = LoraTensors(alpha=alpha)
    for module, ab in sorted(modules.items()):
        if set(ab) != {"lora_A", "lora_B"}:
            raise refuse(adapter_dir, module, "it holds only one of lora_A and lora_B")
        a, b = ab["lora_A"].numpy(), ab["lora_B"].numpy()
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise refuse(adapter_dir, module, f"lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} are not a rank-r pair")
        found = name_of(module + ".weight")
        if found is None:
            raise refuse(adapter_dir, module, "llama.cpp's llama architecture has no tensor for it (is the adapter for "
                                              f"this base model? it has {base_config.num_hidden_layers} layers)")
        kind, gguf_name = found
        if kind in (gguf.MODEL_TENSOR.TOKEN_EMBD, gguf.MODEL_TENSOR.OUTPUT):
            raise refuse(adapter_dir, module, HEAD)
        rank = a.shape[0]
        factor = peft_scale(config, module, rank) * rank / alpha
        if not math.isclose(factor, 1.0, rel_tol=1e-12):
            b = (b.astype(np.float64) * factor).astype(np.float32)
            out.folded[gguf_name] = factor
        out.pairs.append((gguf_name, a, llamacpp_rows(kind, b, base_config)))
        out.modules[gguf_name] = module
    if not out.pairs:
        raise refuse(adapter_dir, None, "it holds no LoRA weights")
    return out


def write_gguf_lora(adapter_dir: str | Path, base_config, path: str | Path, *, adapter_type: str = "f32",
                    name: str | None = None) -> LoraTensors:
    """Write the PEFT adapter folder `adapter_dir`, made for a model with `base_config` (a transformers config,
    or a model folder holding config.json), as a GGUF LoRA adapter at `path` (written atomically); returns what
    it wrote. `adapter_type`: f32 (exact) or f16, the type of every lora_a / lora_b."""
    import gguf

    if adapter_type not in ADAPTER_TYPES:
        raise UserError(f"GGUF LoRA adapter type '{adapter_type}' is not one of {', '.join(ADAPTER_TYPES)}")
    if isinstance(base_config, str | Path):
        from transformers import AutoConfig

        base_config = AutoConfig.from_pretrained(str(base_config))
    lora = lora_tensors(adapter_dir, base_config)
    dtype = np.float32 if adapter_type == "f32" else np.float16
    path = Path(path)
    with atomic_file(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_name(name or Path(adapter_dir).expanduser().resolve().name)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, lora.alpha)
        for gguf_name, a, b in lora.pairs:
            writer.add_tensor(f"{gguf_name}.lora_a", np.ascontiguousarray(a, dtype=dtype))
            writer.add_tensor(f"{gguf_name}.lora_b", np.ascontiguousarray(b, dtype=dtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return lora
