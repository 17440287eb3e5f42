"""Peak memory and speed of a prune recovery that trains a masked LoRA against one that trains the kept weights.

    python benchmarks/recovery_memory.py
    python benchmarks/recovery_memory.py --config recipes/prune_wanda50_sst2.yaml --steps 20

Each mode runs the recipe's recovery (distillation and batch as the recipe sets them) in its own
`tuneforge prune` process, so each peak resident set size (ru_maxrss from os.wait4) is that run's alone.
Magnitude pruning stands in for the recipe's method: the recovery costs the same whatever chose the zeros,
and magnitude needs no calibration pass. A third run without recovery gives the peak that loading, pruning and
scoring reach on their own. Printed: peak RSS, recovery tokens/s and trainable parameters of
each mode, and weights' ratio to LoRA.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from peak_memory import run_short


def run_recovery(config: str, mode: str, steps: int, out: Path) -> dict:
    chosen = ["recovery.enabled=false"] if mode == "none" else [f"recovery.train={mode}"]
    overrides = [*chosen, "prune.method=magnitude", "prune.refit=false", "prune.steps=1"]
    peak, metrics = run_short("prune", config, overrides, steps=steps, out=out, name=mode, what=f"recovery.train={mode}")
    return {"peak_rss_gb": peak, **metrics.get("recovery", {})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="recipes/prune_wanda50_sst2.yaml")
    p.add_argument("--steps", type=int, default=20, help="recovery steps per mode")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {mode: run_recovery(args.config, mode, args.steps, Path(tmp)) for mode in ("none", "lora", "weights")}
    print(f"no recovery: peak RSS {results.pop('none')['peak_rss_gb']:.2f} GB (loading, pruning, scoring)")
    for mode, r in results.items():
        print(f"{mode:8s} peak RSS {r['peak_rss_gb']:.2f} GB  {r['tokens_per_second']:.0f} tokens/s  "
              f"{r['trainable_params'] / 1e6:.1f}M trainable")
    lora, weights = results["lora"], results["weights"]
    print(f"weights / lora: memory {weights['peak_rss_gb'] / lora['peak_rss_gb']:.2f}x, "
          f"speed {weights['tokens_per_second'] / lora['tokens_per_second']:.2f}x")


if __name__ == "__main__":
    main()
