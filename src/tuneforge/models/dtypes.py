"""The dtype rules, written once: which dtypes a model may load in, and when bf16 pays off (native on this
CPU, or a GPU that supports it)."""

from __future__ import annotations

import functools
from pathlib import Path

from tuneforge.config import DTYPES
from tuneforge.errors import UserError


@functools.cache
def cpu_has_bf16() -> bool:
    """True where the CPU runs bf16 matmuls natively (AVX512-BF16 or AMX); elsewhere bf16 is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(name: str = "auto", device: str | None = None):
    import torch

    if name not in DTYPES:
        raise UserError(f"dtype '{name}' is not one of {', '.join(DTYPES)}")
    if name != "auto":
        return getattr(torch, name)
    device = device or default_device()
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def use_bf16(setting: str, device: str) -> bool:
    """train.bf16: auto trains in bf16 only where it is native (a bf16 GPU, AVX512-BF16 or AMX); elsewhere fp32."""
    import torch

    if setting != "auto":
        return setting == "true"
    return torch.cuda.is_bf16_supported() if device.startswith("cuda") else cpu_has_bf16()
