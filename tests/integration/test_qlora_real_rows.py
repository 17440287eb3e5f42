"""QLoRA on the embedded model and real SST-2 rows: the base loads as NF4, LoRA trains on it, the adapter is plain.

bitsandbytes >= 0.48 runs NF4 on CPU, so this runs here; on a GPU the same code path uses its CUDA kernels.
"""

import importlib.util
import json
import math
from pathlib import Path

import pytest

from tuneforge.config import FinetuneConfig, validate

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes (tuneforge[bnb])"),
]

SST2 = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "sentiment" / "sst2"


def test_qlora_on_the_embedded_model_and_real_rows(tmp_path):
    import bitsandbytes as bnb
    import torch
    from peft import PeftModel

    from tuneforge.models import load_model
    from tuneforge.recipes.finetune import finetune
    from tuneforge.training.setup import setup

    if not (SST2 / "train.tsv").exists():
        pytest.skip(f"real data not found at {SST2}")
    cols = {"text_column": "sentence", "label_column": "label"}
    cfg = validate(FinetuneConfig, {
        "name": "qlora", "output_dir": str(tmp_path), "method": "qlora",
        "task": {"name": "sentiment", "labels": ["negative", "positive"]},
        "data": {"train": {"path": str(SST2 / "train.tsv"), "limit": 16, **cols},
                 "dev": {"path": str(SST2 / "dev.tsv"), "limit": 8, **cols}},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"batch_size": 4, "max_steps": 4, "lr": 3e-4, "log_every": 1},
        "eval": {"batch_size": 8},
    })
    s = setup(cfg)
    bases = [m for n, m in s.model.named_modules() if n.endswith("proj.base_layer")]
    assert len(bases) == 30 * 7 and all(isinstance(m, bnb.nn.Linear4bit) for m in bases)
    del s
    run_dir = finetune(cfg)
    result = json.loads((run_dir / "metrics.json").read_text())
    assert result["method"] == "qlora" and result["train"]["steps"] == 4
    assert result["before"]["n"] == result["after"]["n"] == 8 and result["after"]["unparseable"] < 8
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)

    # The adapter is a plain LoRA adapter: it loads on the float model and changes its output.
    model, tok = load_model(None, dtype="float32")
    ids = tok("a gorgeous , witty , seductive movie .", return_tensors="pt").input_ids
    with torch.no_grad():
        plain = model(ids).logits
        tuned = PeftModel.from_pretrained(model, str(run_dir / "adapter"))(ids).logits
    assert not torch.allclose(plain, tuned)
