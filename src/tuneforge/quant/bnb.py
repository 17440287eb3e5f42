"""bitsandbytes 8-bit (LLM.int8) and 4-bit NF4 loading; these kernels exist only for CUDA GPUs."""

from __future__ import annotations

from pathlib import Path

from tuneforge.errors import UserError

BNB_METHODS = ("bnb_8bit", "bnb_nf4")


def require_cuda(method: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            f"method {method} needs a CUDA GPU (bitsandbytes 8-bit/NF4 kernels); this machine has none. "
            "On CPU use method=int8_weight_only, int8_dynamic or gguf_q8_0"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise UserError(f"method {method} needs bitsandbytes: `pip install 'tuneforge[cuda]'`") from e


def bnb_config(method: str):
    import torch
    from transformers import BitsAndBytesConfig

    if method == "bnb_8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if method == "bnb_nf4":
        compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
        )
    raise UserError(f"bitsandbytes method '{method}' is not one of {', '.join(BNB_METHODS)}")


def load_bnb(float_folder: str | Path, method: str):
    """Load a float HF folder onto the GPU with bitsandbytes-quantized Linear layers."""
    require_cuda(method)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(float_folder), quantization_config=bnb_config(method), device_map={"": 0}
    ).eval()
