"""The run's accelerator, optimizer, learning-rate schedule and parameter count."""

from __future__ import annotations

import torch
from torch import nn


def make_accelerator(bf16: bool):
    """The run's Accelerator. accelerate keeps one process-wide state and refuses a second Accelerator with
    another precision; a second run in one process (a notebook, the tests on a CPU with bf16) may need one,
    so the old state is dropped first (accelerate has no public call for it; distributed setup is kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    cpu = not torch.cuda.is_available()  # processes() makes the same choice
    accelerator = Accelerator(cpu=cpu, mixed_precision="bf16" if bf16 else "no")
    if cpu:
        fsdp_on_cpu(accelerator)
    return accelerator


def processes():
    """This process among those torchrun / accelerate launch started (is_main_process, num_processes, ...), for
    a verb that works before it trains: the distributed setup an accelerator made later keeps."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def fsdp_on_cpu(accelerator) -> None:
    """`accelerate launch` with an FSDP config on CPU processes: accelerate (1.16) sets up FSDP on GPUs only and
    quietly runs plain DDP on CPUs. torch's FSDP runs on CPU (gloo), so turn accelerate's FSDP path on here:
    a CPU run (the tests, a laptop) then goes through the same sharding, gathering and saving as a GPU one."""
    import os

    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = accelerator.state
    if (os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or state.num_processes < 2
            or state.distributed_type not in (DistributedType.MULTI_CPU, DistributedType.FSDP)
            or getattr(state, "fsdp_plugin", None) is not None):
        return
    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables accelerate launch set
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    # both shared states: a later AcceleratorState() (accelerate makes them freely) copies PartialState's type
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin


def shards_weights(accelerator) -> bool:
    """FSDP or DeepSpeed ZeRO-3: no process holds the whole model while it trains, so scoring and saving need
    the weights gathered first (training.setup.gather_model)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    return (accelerator.distributed_type == DistributedType.DEEPSPEED
            and accelerator.state.deepspeed_plugin.zero_stage == 3)


def make_optimizer(model: nn.Module, train_cfg):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)


def make_scheduler(optimizer, train_cfg, total_steps: int):
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[train_cfg.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=int(train_cfg.warmup_ratio * total_steps),
                         num_training_steps=total_steps)


def count_params(model: nn.Module) -> tuple[int, int]:
    from tuneforge.models.bnb import weight_count

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(weight_count(p) for p in model.parameters())
    return trainable, total


def refuse_sharding(accelerator, verbs: str) -> None:
    """Verbs that go on using their own model object after training cannot take FSDP's gathered copy."""
    from tuneforge.errors import UserError

    if shards_weights(accelerator):
        raise UserError(f"{verbs} do not run under FSDP or DeepSpeed ZeRO-3 (finetune does); launch with "
                        "torchrun, or with an accelerate config without sharding (distributed_type: MULTI_GPU)")
