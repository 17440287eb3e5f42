"""The shipped compression recipes run on the embedded model and a few real rows (SST-2 and Vietnamese UIT-VSFC).

Each test loads the recipe a user runs, cut down by overrides (no adapter, a few rows, a few steps), so that a
recipe that drifts from its verb fails here and not on the user's machine.
"""

import json
from pathlib import Path

import pytest
import torch

from tuneforge.config import merge, read_yaml, validate

pytestmark = pytest.mark.integration
RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def recipe(cls, file: str, tmp_path, **changes):
    """The repository's recipe with `changes` merged in, written to tmp_path/runs."""
    data = merge(read_yaml(RECIPES / file), {"output_dir": str(tmp_path / "runs"), "adapter": None, **changes})
    return validate(cls, data, source=file)


def sst2(data_dir, split: str, limit: int) -> dict:
    return {"path": str(data_dir / "sentiment" / "sst2" / f"{split}.tsv"), "limit": limit}


def uit_vsfc(data_dir, split: str, limit: int) -> dict:
    return {"path": str(data_dir / "sentiment" / "uit_vsfc" / split), "format": "lines", "limit": limit,
            "files": {"text": "sents.txt", "label": "sentiments.txt"}, "text_column": None, "label_column": None}


def zeros_per_matrix(folder) -> dict[str, float]:
    """Counted on the model as a user reloads it, not on the one that was pruned in memory."""
    from transformers import AutoModelForCausalLM

    from tuneforge.compress.prune import prunable_linears

    model = AutoModelForCausalLM.from_pretrained(folder)
    return {name: float((lin.weight == 0).float().mean()) for name, lin in prunable_linears(model).items()}


def test_wanda_recipe_prunes_half_of_every_matrix_and_recovery_keeps_the_zeros(data_dir, tmp_path):
    from tuneforge.recipes.prune import PruneConfig, prune

    cfg = recipe(PruneConfig, "prune_wanda50_sst2.yaml", tmp_path, name="wanda",
                 data={"train": sst2(data_dir, "train", 24), "dev": sst2(data_dir, "dev", 8)},
                 prune={"steps": 1, "calibration_rows": 8, "refit": False}, train={"max_steps": 2, "batch_size": 4}, eval={"batch_size": 8})

    run = prune(cfg)

    metrics = json.loads((run / "metrics.json").read_text())
    assert {"before", "pruned", "recovered"} <= set(metrics) and metrics["before"]["n"] == 8
    reported = json.loads((run / "sparsity.json").read_text())["per_matrix"]
    reloaded = zeros_per_matrix(run / "model")
    assert len(reloaded) == 30 * 7 and set(reported) == set(reloaded)
    assert all(abs(s - 0.5) < 1e-3 for s in reloaded.values()), "recovery must leave every pruned weight at zero"
    assert all(abs(reported[k] - reloaded[k]) < 1e-6 for k in reloaded)


def test_block_removal_recipe_saves_a_shorter_model_that_reloads(data_dir, tmp_path):
    from transformers import AutoConfig

    from tuneforge.recipes.prune import PruneConfig, prune

    cfg = recipe(PruneConfig, "prune_blocks25_sst2.yaml", tmp_path, name="blocks",
                 data={"train": sst2(data_dir, "train", 16), "dev": sst2(data_dir, "dev", 8)},
                 prune={"calibration_rows": 8}, train={"max_steps": 2, "batch_size": 4}, eval={"batch_size": 8})

    run = prune(cfg)

    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["removed_blocks"]) == 8 and metrics["blocks_left"] == 22
    assert AutoConfig.from_pretrained(run / "model").num_hidden_layers == 22
    assert set(metrics["removed_blocks"]).isdisjoint({0})  # block 0 reshapes the embeddings most; never the least important
    assert {"before", "pruned", "recovered"} <= set(metrics)


def test_int8_recipe_reloads_smaller_and_answers_like_the_float_model(data_dir, tmp_path):
    from tuneforge.compress.quant.torchao import load_quantized
    from tuneforge.recipes.quantize import QuantizeConfig, quantize

    cfg = recipe(QuantizeConfig, "quantize_int8_sst2.yaml", tmp_path, name="int8",
                 data={"dev": sst2(data_dir, "dev", 8)}, speed={"new_tokens": 8, "repeats": 1}, eval={"batch_size": 8})

    run = quantize(cfg)

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["size_after_bytes"] < 0.75 * metrics["size_before_bytes"]
    assert abs(metrics["delta"]) <= 0.125, "int8 weights may flip at most one of 8 answers"
    reloaded = load_quantized(run / "model")
    kinds = [type(m.weight) for m in reloaded.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    assert len(kinds) == 30 * 7 and len(set(kinds)) == 1  # every block matrix, read back from the folder alone,
    assert kinds[0].__module__.startswith("torchao") and "Int8" in kinds[0].__name__  # as torchao's int8 weights
    assert reloaded.model.embed_tokens.weight.dtype.is_floating_point  # the tied embedding / head stays float


def test_distill_recipe_trains_a_half_depth_student_on_vietnamese_teacher_answers(data_dir, tmp_path):
    from transformers import AutoConfig

    from tuneforge.recipes.distill import DistillConfig, distill

    cfg = recipe(DistillConfig, "distill_half_sst2.yaml", tmp_path, name="distill-vi",
                 task={"name": "sentiment", "labels": ["negative", "neutral", "positive"]},
                 data={"train": uit_vsfc(data_dir, "train", 8), "dev": uit_vsfc(data_dir, "dev", 8)},
                 kd={"sequence_level": True, "generate_batch_size": 8},
                 train={"max_steps": 2, "batch_size": 4, "epochs": 1}, eval={"batch_size": 8},
                 speed={"new_tokens": 8, "repeats": 1})

    run = distill(cfg)

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["kept_blocks"] == list(range(15))
    assert AutoConfig.from_pretrained(run / "model").num_hidden_layers == 15
    assert metrics["student_speed"]["parameters"] < metrics["teacher_speed"]["parameters"]
    assert all(metrics[k]["n"] == 8 for k in ("teacher", "before", "after"))
    assert metrics["train"]["steps"] == 2
    predictions = [json.loads(line) for line in (run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert any(ch in predictions[0]["prompt"] for ch in "ăâđêôơư"), "the Vietnamese review reaches the prompt intact"
