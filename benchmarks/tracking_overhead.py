"""What train.report_to costs: the SST-2 LoRA recipe on the embedded model, with no trackers and with
TensorBoard + MLflow, in alternating rounds in one process; training tokens/s of each (from metrics.json) and
their ratio. Then the cost itself, which run-to-run noise on a small CPU can hide: the seconds one logged row
takes to reach both trackers, against the seconds of a training step. MLflow writes to a SQLite store in a
scratch folder.

    python benchmarks/tracking_overhead.py                 # 3 rounds of 40 steps
    python benchmarks/tracking_overhead.py --rounds 5 --steps 60
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from tuneforge.config import FinetuneConfig, load_config
from tuneforge.quiet import quiet
from tuneforge.recipes.finetune import finetune
from tuneforge.tracking import open_tracking

ARMS = {"no trackers": [], "tensorboard + mlflow": ["tensorboard", "mlflow"]}


def one_run(recipe: str, out: Path, name: str, steps: int, report_to: list[str]) -> tuple[float, float]:
    """(training tokens/s, seconds per step) of one short run."""
    overrides = [f"name={name}", f"output_dir={out}", f"train.max_steps={steps}", f"data.train.limit={steps * 8}",
                 "train.log_every=1", "train.save_every=0", "eval_before=false", "eval.limit=8", "eval.probes=[]",
                 f"train.report_to={json.dumps(report_to)}"]
    run_dir = finetune(load_config(FinetuneConfig, recipe, overrides))
    train = json.loads((run_dir / "metrics.json").read_text())["train"]
    return train["tokens_per_second"], train["seconds"] / train["steps"]


def seconds_per_logged_row(folder: Path, calls: int = 200) -> float:
    """One training row (6 scalars) to TensorBoard + MLflow, as fit logs it."""
    tracking = open_tracking(ARMS["tensorboard + mlflow"], folder, {"train": {"lr": 1e-4}})
    row = {"loss": 0.5, "lr": 1e-4, "grad_norm": 1.0, "tokens": 1000, "tokens_per_second": 400.0, "elapsed": 1.0}
    start = time.perf_counter()
    for step in range(calls):
        tracking.log({f"train/{k}": v for k, v in row.items()}, step)
    seconds = (time.perf_counter() - start) / calls
    tracking.end()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/sst2_lora.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run (log_every 1: every step logs)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, quiet():
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{scratch}/mlflow.db")
        runs: dict[str, list[tuple[float, float]]] = {arm: [] for arm in ARMS}
        for r in range(args.rounds):
            order = list(ARMS) if r % 2 == 0 else list(reversed(ARMS))  # neither arm always runs first
            for arm in order:
                runs[arm].append(one_run(args.recipe, Path(scratch), f"r{r}-{len(ARMS[arm])}", args.steps, ARMS[arm]))
        (Path(scratch) / "calls").mkdir()
        per_row = seconds_per_logged_row(Path(scratch) / "calls")
    print(f"\n{args.rounds} rounds x {args.steps} steps, batch 8, every step logged")
    for arm, values in runs.items():
        tps = [v[0] for v in values]
        print(f"{arm:22s} tokens/s min {min(tps):7.1f}  median {statistics.median(tps):7.1f}  max {max(tps):7.1f}")
    ratios = [t[0] / b[0] for t, b in zip(runs["tensorboard + mlflow"], runs["no trackers"], strict=True)]
    print(f"tracked / untracked, per round: {', '.join(f'{x:.3f}' for x in ratios)}; "
          f"median {statistics.median(ratios):.3f}")
    step = statistics.median(v[1] for v in runs["no trackers"])
    print(f"one logged row to tensorboard + mlflow: {1000 * per_row:.2f} ms = {100 * per_row / step:.2f}% of an "
          f"untracked step ({step:.2f} s)")


if __name__ == "__main__":
    main()
