"""`make demo`: import the embedded model, score it zero-shot on SST-2 dev, LoRA-fine-tune it on SST-2
train rows, score it again, print the before/after table and the report path. Runs offline.

Uses ../shared/data/sentiment/sst2 when it exists, else the small sample that ships with the package.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tuneforge.config import FinetuneConfig, load_config, validate
from tuneforge.errors import UserError

RECIPE = Path("recipes/sst2_lora.yaml")
SST2 = Path("../shared/data/sentiment/sst2")


def demo_config(extra: list[str]) -> FinetuneConfig:
    if SST2.is_dir() and RECIPE.exists():
        print(f"data: {SST2} (SST-2), recipe: {RECIPE}")
        return load_config(FinetuneConfig, RECIPE, ["name=demo-sst2", *extra])
    from tuneforge.data import sample_path

    print("data: the packaged sentiment sample (../shared/data/sentiment/sst2 not found)")
    cols = {"text_column": "sentence", "label_column": "label"}
    return validate(FinetuneConfig, {
        "name": "demo-sample",
        "task": {"name": "sentiment", "labels": ["negative", "positive"]},
        "data": {"train": {"path": str(sample_path("sentiment_en.train.tsv")), **cols},
                 "dev": {"path": str(sample_path("sentiment_en.dev.tsv")), **cols}},
        "lora": {"dropout": 0.0},
        "train": {"epochs": 3, "lr": 3e-4},
    })


def main(argv: list[str] | None = None) -> int:
    from tuneforge.models.known import DEFAULT_MODEL
    from tuneforge.models.registry import resolve_model
    from tuneforge.quiet import drop_known_import_notices, quiet
    from tuneforge.recipes.finetune import finetune
    from tuneforge.report.run_report import print_summary

    args = list(argv if argv is not None else sys.argv[1:])
    verbose = "--verbose" in args
    drop_known_import_notices()
    try:
        with quiet(verbose):  # the demo shows tuneforge's own progress and results, as every verb does
            print(f"model: {DEFAULT_MODEL} -> {resolve_model(DEFAULT_MODEL)}")
            cfg = demo_config([a for a in args if a != "--verbose"])
            run_dir = finetune(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import json

    print_summary(json.loads((run_dir / "metrics.json").read_text()), run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
