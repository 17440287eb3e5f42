"""What train.report_to costs: the SST-2 LoRA recipe on the embedded model, with no trackers and with
TensorBoard + MLflow, in alternating rounds in one process; training tokens/s of each (from metrics.json) and
their ratio. MLflow writes to a SQLite store in a scratch folder.

    python benchmarks/tracking_overhead.py                 # 3 rounds of 40 steps
    python benchmarks/tracking_overhead.py --rounds 5 --steps 60
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from tuneforge.config import FinetuneConfig, load_config
from tuneforge.quiet import quiet
from tuneforge.recipes.finetune import finetune

ARMS = {"no trackers": [], "tensorboard + mlflow": ["tensorboard", "mlflow"]}


def one_run(recipe: str, out: Path, name: str, steps: int, report_to: list[str]) -> float:
    overrides = [f"name={name}", f"output_dir={out}", f"train.max_steps={steps}", f"data.train.limit={steps * 8}",
                 "train.log_every=1", "train.save_every=0", "eval_before=false", "eval.limit=8", "eval.probes=[]",
                 f"train.report_to={json.dumps(report_to)}"]
    run_dir = finetune(load_config(FinetuneConfig, recipe, overrides))
    return json.loads((run_dir / "metrics.json").read_text())["train"]["tokens_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/sst2_lora.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run (log_every 1: every step logs)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, quiet():
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{scratch}/mlflow.db")
        speeds: dict[str, list[float]] = {arm: [] for arm in ARMS}
        for r in range(args.rounds):
            order = list(ARMS) if r % 2 == 0 else list(reversed(ARMS))  # neither arm always runs first
            for arm in order:
                speeds[arm].append(one_run(args.recipe, Path(scratch), f"r{r}-{len(ARMS[arm])}", args.steps, ARMS[arm]))
    print(f"\n{args.rounds} rounds x {args.steps} steps, batch 8, every step logged")
    for arm, values in speeds.items():
        print(f"{arm:22s} tokens/s min {min(values):7.1f}  median {statistics.median(values):7.1f}  max {max(values):7.1f}")
    ratios = [t / b for t, b in zip(speeds["tensorboard + mlflow"], speeds["no trackers"], strict=True)]
    print(f"tracked / untracked, per round: {', '.join(f'{x:.3f}' for x in ratios)}; "
          f"median {statistics.median(ratios):.3f} (overhead {100 * (1 - statistics.median(ratios)):.1f}%)")


if __name__ == "__main__":
    main()
