"""all-MiniLM-L6-v2 with a classification head on a few real SST-2 and UIT-VSFC rows (LoRA and full)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.config import load_config
from tuneforge.training.classifier import ClassifierConfig, finetune_classifier

ROOT = Path(__file__).parents[2]
DATA = ROOT.parent / "shared" / "data" / "sentiment"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not DATA.exists(), reason="needs ../shared/data/sentiment"),
]


def run(recipe: str, tmp_path, *overrides: str) -> dict:
    cfg = load_config(ClassifierConfig, ROOT / recipe, [f"output_dir={tmp_path}", "train.log_every=1", *overrides])
    # Recipes name data relative to the repository root.
    for spec in (cfg.data.train, cfg.data.dev):
        spec.path = str((ROOT / spec.path).resolve())
    folder = finetune_classifier(cfg)
    return {"folder": folder, "metrics": json.loads((folder / "metrics.json").read_text(encoding="utf-8"))}


def test_sst2_lora_on_real_rows(tmp_path):
    out = run("recipes/classifier_sst2_minilm.yaml", tmp_path, "data.train.limit=64", "data.dev.limit=32")
    m = out["metrics"]
    assert m["labels"] == ["negative", "positive"] and m["dev_rows"] == 32 and m["train_rows"] == 64
    # LoRA r16 on all 36 linear layers of the 6 blocks + the pooler, plus the 2-way head (pinned).
    assert m["train"]["trainable_params"] == 676_610
    assert m["train"]["total_params"] > 22_000_000
    assert 0.0 <= m["after"]["accuracy"] <= 1.0 and m["before"] is not None
    assert (out["folder"] / "adapter" / "adapter_config.json").exists()


def test_uitvsfc_full_reads_vietnamese_and_three_labels(tmp_path):
    out = run("recipes/classifier_uitvsfc_minilm.yaml", tmp_path, "method=full", "train.lr=1e-4",
              "data.train.limit=48", "data.dev.limit=24", "eval_before=false")
    m = out["metrics"]
    assert m["labels"] == ["negative", "neutral", "positive"]
    assert m["train"]["trainable_params"] == m["train"]["total_params"]
    preds = [json.loads(x) for x in (out["folder"] / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(preds) == 24 and {p["prediction"] for p in preds} <= set(m["labels"])
    assert any(ch in "".join(p["text"] for p in preds) for ch in "ạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹđ")
