"""Start-up notices from other libraries that no user can act on, dropped before a verb runs."""

from __future__ import annotations

import logging
import warnings


def drop_known_import_notices() -> None:
    """Notices printed on every start (peft imports torchao and bitsandbytes) that no user can act on: torch 2.13
    calls torchao's Enum pytree registrations deprecated (pytorch/ao#4848, open upstream); on a machine without
    CUDA torchao's CUDA-only kernels fail to load; and bitsandbytes cannot fetch an optional faster CPU kernel
    from the Hugging Face Hub (the `kernels` package), so it uses its PyTorch kernels, which work offline. On a
    CUDA machine torchao's notice stays visible: there it means something."""
    logging.getLogger("torch.utils._pytree").addFilter(
        lambda record: "is an Enum subclass and is now natively supported" not in record.getMessage())
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        lambda record: not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward from kernels-community"))
    # transformers' bitsandbytes loading and peft's k-bit preparation still read a property transformers renamed
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    logging.getLogger("torchao").addFilter(_torchao_without_cuda)


def _torchao_without_cuda(record: logging.LogRecord) -> bool:
    if not record.getMessage().startswith("Failed to load"):
        return True
    import torch  # torchao imported it already; asking here keeps torch out of a start that never needs it

    return torch.cuda.is_available()
