"""`tuneforge compare` end to end: the embedded model against a pruned bf16 model on real SST-2 dev rows."""

import json
from pathlib import Path

import pytest
import torch

from tuneforge.config import validate
from tuneforge.recipes.compare import CompareConfig, compare

pytestmark = pytest.mark.integration


def test_compare_writes_one_table_chart_and_report_with_what_each_model_stores(tmp_path, data_dir, tiny_llama_dir,
                                                                                 embedded_tokenizer):
    from transformers import AutoModelForCausalLM

    from tuneforge.compress.prune import apply_masks, magnitude_masks

    pruned_dir = tmp_path / "pruned-bf16"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    masks = magnitude_masks(model, 0.5, scope="row")
    apply_masks(model, masks)
    model.to(torch.bfloat16).save_pretrained(pruned_dir)
    embedded_tokenizer.save_pretrained(pruned_dir)
    dev = data_dir / "sentiment" / "sst2" / "dev.tsv"
    cfg = validate(CompareConfig, {
        "name": "cmp", "output_dir": str(tmp_path / "runs"), "dtype": "float32",
        "task": {"name": "sentiment", "labels": ["negative", "positive"]},
        "data": {"dev": {"path": str(dev), "text_column": "sentence", "label_column": "label"}},
        "models": [{"name": "embedded", "baseline": True}, {"name": "tiny pruned", "path": str(pruned_dir)}],
        "speed": {"prompt_tokens": 16, "new_tokens": 4, "repeats": 1},
        "eval": {"limit": 8, "batch_size": 8},
    })

    run_dir = compare(cfg)

    rows = {r["name"]: r for r in json.loads((run_dir / "compare.json").read_text())["rows"]}
    base, pruned = rows["embedded"], rows["tiny pruned"]
    assert base["stored"] == "f32" and pruned["stored"] == "bf16"
    assert base["dtype"] == pruned["dtype"] == "float32"  # both run in the config's dtype, whatever they store
    pruned_zeros = sum(int((~m).sum()) for m in masks.values())
    assert pruned["parameters"] - pruned["nonzero_parameters"] >= pruned_zeros
    assert pruned["size_mb"] < base["size_mb"]
    assert base["metric"] > pruned["metric"]  # the instruct model labels real reviews; a random tiny one cannot
    assert base["decode_tok_s"] > 0 and pruned["decode_tok_s"] > 0
    table = (run_dir / "compare.md").read_text()
    assert "| embedded" in table and "| tiny pruned" in table and "bf16" in table
    assert Path(run_dir / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tiny pruned" in (run_dir / "report.html").read_text()
