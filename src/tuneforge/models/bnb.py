"""bitsandbytes 8-bit (LLM.int8) and 4-bit NF4 loading, for `quantize` and for QLoRA in `finetune`.

bitsandbytes also runs these layers on CPU (plain PyTorch kernels), so a CPU is refused only when the installed
bitsandbytes cannot run them there; a short probe finds that out before minutes of work.
"""

from __future__ import annotations

import functools
from pathlib import Path

from tuneforge.errors import UserError

BNB_METHODS = ("bnb_8bit", "bnb_nf4")
INSTALL = "pip install 'tuneforge[bnb]'"
# 0.46 brought the CPU kernels; transformers loads bitsandbytes models from 0.46.1, and moves 8-bit ones with .to()
# (how compare, evaluate and serve place a saved model) from 0.48
MIN_VERSION = "0.48"


def is_bnb_quantized(param) -> bool:
    return type(param).__name__ in ("Params4bit", "Int8Params")


def weight_count(param) -> int:
    """How many weights a parameter holds: a bitsandbytes 4-bit one packs two per byte (its quant_state has the shape)."""
    state = getattr(param, "quant_state", None)
    return state.shape.numel() if state is not None else param.numel()


@functools.cache
def cpu_probe(method: str) -> str | None:
    """None when a tiny bitsandbytes layer of this kind runs forward and backward on CPU; else the error text."""
    import warnings

    import bitsandbytes as bnb
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if method == "bnb_nf4":
                layer = bnb.nn.Linear4bit(64, 8, bias=False, quant_type="nf4", compute_dtype=torch.float32)
                layer.weight = bnb.nn.Params4bit(torch.randn(8, 64), requires_grad=False, quant_type="nf4")
            else:
                layer = bnb.nn.Linear8bitLt(64, 8, bias=False, has_fp16_weights=False)
                layer.weight = bnb.nn.Int8Params(torch.randn(8, 64), requires_grad=False, has_fp16_weights=False)
            x = torch.randn(2, 64, requires_grad=True)
            layer.to("cpu")(x).sum().backward()
    except Exception as e:  # any failure means: this build has no CPU kernels for it
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no CPU kernel'}"
    return None


def require_bnb(method: str, *, what: str = "", instead: str = "method=int8_weight_only, int8_dynamic or gguf_q8_0") -> str:
    """The device bitsandbytes will use ('cuda' or 'cpu'), or one clear error saying what to install or use.

    `what` names the user's setting when it is not `method: bnb_*` itself (QLoRA), `instead` what works on CPU.
    """
    import torch
    from packaging.version import Version

    what = what or f"method {method}"
    try:
        import bitsandbytes
    except Exception as e:  # not installed, or a build that fails to import here
        raise UserError(f"{what} needs bitsandbytes >= {MIN_VERSION}: `{INSTALL}` ({type(e).__name__}: {e})") from e
    if Version(bitsandbytes.__version__) < Version(MIN_VERSION):
        raise UserError(f"{what} needs bitsandbytes >= {MIN_VERSION}; {bitsandbytes.__version__} is installed: `{INSTALL}`")
    if torch.cuda.is_available():
        return "cuda"
    problem = cpu_probe(method)
    if problem:
        raise UserError(
            f"{what} needs a CUDA GPU, or a bitsandbytes whose CPU backend runs it; bitsandbytes "
            f"{bitsandbytes.__version__} cannot here ({problem}). On CPU use {instead}"
        )
    return "cpu"


def bnb_config(method: str, device: str = "cuda", compute_dtype=None):
    """`compute_dtype`: what NF4 dequantizes to; default bf16 where the hardware runs it natively, else fp16 (GPU)
    or fp32 (CPU). QLoRA passes its run's precision instead."""
    from transformers import BitsAndBytesConfig

    from tuneforge.models.dtypes import pick_dtype

    if method == "bnb_8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if method == "bnb_nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype or pick_dtype("auto", device),
        )
    raise UserError(f"bitsandbytes method '{method}' is not one of {', '.join(BNB_METHODS)}")


def bnb_load_arguments(method: str, device: str | None = None, compute_dtype=None) -> dict:
    """from_pretrained keyword arguments that quantize the Linear layers while loading, onto one device."""
    device = device or require_bnb(method)
    return {"quantization_config": bnb_config(method, device, compute_dtype), "device_map": {"": device}}


def load_bnb(float_folder: str | Path, method: str):
    """Load a float HF folder with bitsandbytes-quantized Linear layers (on the GPU, or on CPU where supported)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(float_folder), **bnb_load_arguments(method)).eval()


def nf4_layers(model) -> list:
    """The model's bitsandbytes Linear4bit layers ([] when bitsandbytes was never imported: there are none)."""
    import sys

    bnb = sys.modules.get("bitsandbytes")
    return [] if bnb is None else [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def skip_unfit_cpu_repacking(model):
    """Keep NF4 layers that bitsandbytes' packed CPU kernel cannot take on its plain kernel; returns the model.

    On AVX512-BF16 CPUs the first inference pass repacks each Linear4bit for that kernel, which needs whole
    blocks of inputs and 32-row tiles of outputs; any other shape (a small custom model) fails there with a
    bare reshape or assertion error instead of running.
    """
    for layer in nf4_layers(model):
        state = getattr(layer.weight, "quant_state", None)
        if layer.out_features % 32 or layer.in_features % getattr(state, "blocksize", 64):
            layer.support_avx512bf16_for_cpu = False
    return model


def keep_nf4_layers_trainable(model) -> None:
    """Stop bitsandbytes from repacking NF4 weights into its CPU inference format; QLoRA trains through them.

    On CPUs with AVX512-BF16, bitsandbytes (0.50) repacks a Linear4bit weight at its first forward in eval mode
    without gradients (the dev scoring before training). From then on that layer passes no gradient to its
    input, so LoRA learns from wrong gradients: SST-2 QLoRA loss rose to 7.7 and dev accuracy fell to 0.51.
    """
    for layer in nf4_layers(model):
        layer.support_avx512bf16_for_cpu = False
