"""Run by test_distributed.py under torchrun: distill or prune (with recovery training) on a tiny model, recording
the training rows each process's forward passes received (the loop's collate sees every micro-batch) and the
rows the verb trained on; each process writes rows-rank<N>.json into the output folder."""

import json
import sys
from pathlib import Path

from tuneforge.config import validate
from tuneforge.training import loop


def config(verb: str, model_dir: str, data: str, out: str):
    common = {"name": verb, "output_dir": out, "model": model_dir, "dtype": "float32",
              "task": {"name": "sentiment", "labels": ["negative", "positive"]},
              "data": {split: {"path": data, "text_column": "sentence", "label_column": "label"}
                       for split in ("train", "dev")},
              "eval": {"limit": 2, "batch_size": 2, "max_new_tokens": 2}, "eval_before": False,
              "train": {"batch_size": 2, "epochs": 1, "lr": 1e-2, "max_seq_len": 64, "log_every": 1, "bf16": "false"}}
    if verb == "distill":
        from tuneforge.recipes.distill import DistillConfig

        return validate(DistillConfig, {**common, "eval_teacher": False, "speed": {"new_tokens": 2, "repeats": 1}})
    from tuneforge.recipes.prune import PruneConfig

    return validate(PruneConfig, {**common, "prune": {"method": "magnitude", "sparsity": 0.5},
                                  "recovery": {"enabled": True, "r": 2, "alpha": 4}})


def main():
    verb, model_dir, data, out = sys.argv[1:5]
    seen, trained = [], []
    collate, fit = loop.collate, loop.fit

    def recording_collate(rows, pad):
        seen.extend(row["input_ids"] for row in rows)
        return collate(rows, pad)

    def recording_fit(s):
        trained.extend(e["input_ids"] for e in s.examples)
        return fit(s)

    loop.collate, loop.fit = recording_collate, recording_fit
    if verb == "distill":
        from tuneforge.recipes.distill import distill as run
    else:
        from tuneforge.recipes.prune import prune as run
    run_dir = run(config(verb, model_dir, data, out))
    from tuneforge.training.optim import processes

    rank = processes().process_index
    (Path(out) / f"rows-rank{rank}.json").write_text(json.dumps({"seen": seen, "examples": trained,
                                                                  "run_dir": str(run_dir)}))


if __name__ == "__main__":
    main()
