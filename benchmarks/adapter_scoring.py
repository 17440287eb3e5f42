"""Scoring speed with a LoRA adapter: the base model, the adapter unmerged (peft's LoRA layers on every forward),
and the scoring copy the continual ledger uses (the adapter merged in), on the same dev rows in one process.

    python benchmarks/adapter_scoring.py --adapter runs/demo-sst2/adapter            # SST-2 dev, 872 rows
    python benchmarks/adapter_scoring.py --adapter runs/x/stages/2-sst2/adapter --limit 256

Prints seconds and rows/s of each arm, their ratio to the base model, and whether the merged copy's predictions
equal the unmerged adapter's.
"""

from __future__ import annotations

import argparse
import time

from tuneforge.config import EvalConfig
from tuneforge.config.data import DataSpec
from tuneforge.continual.runner import scoring_copy
from tuneforge.models import load_model
from tuneforge.models.loading import attach_adapter
from tuneforge.scoring import score_task
from tuneforge.tasks import get_task
from tuneforge.tasks.splits import load_split, truncate_sources


def timed(model, tok, task, rows, batch_size: int) -> tuple[float, list[str]]:
    start = time.perf_counter()
    _, predictions = score_task(model, tok, task, rows, batch_size=batch_size, desc="scoring")
    return time.perf_counter() - start, [p["output"] for p in predictions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="a LoRA adapter folder trained on the embedded model")
    parser.add_argument("--dev", default="../shared/data/sentiment/sst2/dev.tsv")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=EvalConfig().batch_size * 2)
    args = parser.parse_args()

    task = get_task("sentiment", labels=["negative", "positive"])
    rows = load_split(task, DataSpec(path=args.dev, text_column="sentence", label_column="label"), "dev")[: args.limit]
    base, tok = load_model(None)
    rows = truncate_sources(task, rows, tok, "dev")
    results = {"base model": timed(base, tok, task, rows, args.batch_size)}
    adapted = attach_adapter(base, args.adapter)
    results["adapter, unmerged"] = timed(adapted, tok, task, rows, args.batch_size)
    results["adapter, merged copy"] = timed(scoring_copy(adapted), tok, task, rows, args.batch_size)
    base_s = results["base model"][0]
    print(f"\n{len(rows)} rows, batch {args.batch_size}")
    for arm, (seconds, _) in results.items():
        print(f"{arm:22s} {seconds:7.1f} s  {len(rows) / seconds:6.1f} rows/s  {seconds / base_s:5.2f}x the base model")
    same = sum(a == b for a, b in zip(results["adapter, unmerged"][1], results["adapter, merged copy"][1], strict=True))
    print(f"merged copy answers like the unmerged adapter on {same} of {len(rows)} rows")


if __name__ == "__main__":
    main()
