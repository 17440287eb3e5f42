"""Peak memory and speed of LoRA on the float base against QLoRA (the same LoRA on an NF4 base), with and
without gradient checkpointing.

    python benchmarks/qlora_memory.py
    python benchmarks/qlora_memory.py --config recipes/sst2_lora.yaml --steps 30

Each arm runs the recipe's training (batch, rank, dtype as the recipe sets them) for --steps steps in its
own `tuneforge finetune` process, so each peak resident set size (ru_maxrss from os.wait4) is that run's
alone. On CPU the float base is bf16 where the CPU has it (`dtype: auto`), else fp32. Printed: peak RSS and
training tokens/s of each, and each arm's ratio to LoRA. On a GPU it prints the GPU's own peak instead
(torch.cuda.max_memory_allocated over the training loop, which finetune records as train.peak_gpu_memory_gb).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from peak_memory import run_short

ARMS = {"lora": ["method=lora"], "qlora": ["method=qlora"],
        "qlora+checkpointing": ["method=qlora", "train.gradient_checkpointing=true"]}


def run_arm(config: str, arm: str, steps: int, out: Path) -> dict:
    # no eval.probes: the chat probe's full-vocabulary logits would set the peak, not training
    peak, metrics = run_short("finetune", config, [*ARMS[arm], "train.save_every=0", "eval.probes=[]"], steps=steps, out=out,
                              name=arm.replace("+", "-"), what=arm)
    return {"peak_rss_gb": peak, **metrics["train"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="recipes/sst2_lora.yaml")
    p.add_argument("--steps", type=int, default=30, help="training steps per arm")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {arm: run_arm(args.config, arm, args.steps, Path(tmp)) for arm in ARMS}
    lora = results["lora"]
    # on a GPU the peak that matters is the GPU's (finetune records it); RSS is the host process's
    key, label = ("peak_gpu_memory_gb", "peak GPU") if "peak_gpu_memory_gb" in lora else ("peak_rss_gb", "peak RSS")
    for arm, r in results.items():
        print(f"{arm:20s} {label} {r[key]:.2f} GB  {r['tokens_per_second']:.0f} tokens/s  "
              f"{r['trainable_params'] / 1e6:.1f}M trainable  vs lora: memory {r[key] / lora[key]:.2f}x, "
              f"speed {r['tokens_per_second'] / lora['tokens_per_second']:.2f}x")


if __name__ == "__main__":
    main()
