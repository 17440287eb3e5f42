"""In-PyTorch int8 with torchao, through transformers' TorchAoConfig so the result saves and reloads as
an ordinary Hugging Face folder (safetensors + quantization_config in config.json).

Only nn.Linear weights are quantized; the (tied) embedding and output head stay in floating point.
"""

from __future__ import annotations

from pathlib import Path

from tuneforge.errors import UserError

TORCHAO_METHODS = ("int8_weight_only", "int8_dynamic")


def torchao_config(method: str, group_size: int | None = None):
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        PerGroup,
        PerRow,
    )
    from transformers import TorchAoConfig

    if method == "int8_weight_only":  # one scale per output row, or per `group_size` weights of a row
        return TorchAoConfig(Int8WeightOnlyConfig(granularity=PerGroup(group_size) if group_size else PerRow()))
    if method == "int8_dynamic":  # int8 activations quantized per token at run time, int8 weights per channel
        return TorchAoConfig(Int8DynamicActivationInt8WeightConfig())
    raise UserError(f"torchao method '{method}' is not one of {', '.join(TORCHAO_METHODS)}")


def check_group_size(model, group_size: int | None) -> None:
    """torchao needs every Linear's input width to be a whole number of groups; say so before any work."""
    import torch

    if not group_size:
        return
    widths = sorted({m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)})
    bad = [w for w in widths if w % group_size]
    if bad:
        fits = [g for g in (32, 64, 128, 256) if all(w % g == 0 for w in widths)]
        raise UserError(f"group_size={group_size} does not divide this model's Linear input widths {bad}; "
                        f"use one that divides all of {widths}" + (f", e.g. {fits[-1]}" if fits else "")
                        + ", or null for one scale per row")


def quantize_folder(float_folder: str | Path, method: str, dtype: str = "auto", group_size: int | None = None):
    """Load a float HF folder with its Linear weights quantized by torchao; returns the model."""
    from transformers import AutoModelForCausalLM

    from tuneforge.models.dtypes import pick_dtype

    return AutoModelForCausalLM.from_pretrained(
        str(float_folder), quantization_config=torchao_config(method, group_size), dtype=pick_dtype(dtype, "cpu")
    ).eval()


def load_quantized(folder: str | Path):
    """Reload a quantized folder (written by models.loading.save_model: safetensors keep torchao's int8 tensors);
    its config.json carries the quantization settings."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise UserError(f"{folder} has no config.json: pass the model/ folder of a quantize run")
    from tuneforge.models.bnb import skip_unfit_cpu_repacking

    return skip_unfit_cpu_repacking(AutoModelForCausalLM.from_pretrained(str(folder)).eval())


def is_torchao_quantized(model) -> bool:
    from torchao.utils import TorchAOBaseTensor

    return any(isinstance(m.weight, TorchAOBaseTensor) for m in model.modules() if hasattr(m, "weight") and m.weight is not None)
