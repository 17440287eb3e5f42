"""The comparison table's fields and measurements, and the shipped compression recipes against their configs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from tuneforge.compress import measure
from tuneforge.compress.prune import apply_masks, magnitude_masks
from tuneforge.config import load_config, validate
from tuneforge.errors import UserError
from tuneforge.recipes.compare import CompareConfig, ModelRow, check_rows, plot_compare, table_rows

RECIPES = Path(__file__).resolve().parents[2] / "recipes"



def tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def result(name, metric, decode, baseline=False, nonzero=1_000_000):
    return {"name": name, "baseline": baseline, "engine": "transformers", "dtype": "float32", "stored": "bf16",
            "parameters": 2_000_000,
            "nonzero_parameters": nonzero, "size_mb": 4.0, "prefill_tok_s": 500.0, "decode_tok_s": decode,
            "metric": metric}


def test_table_rows_fields_and_deltas_from_the_marked_baseline():
    rows = table_rows([result("pruned", 0.85, 30.0), result("base", 0.88, 20.0, baseline=True),
                       result("gguf", 0.87, 90.0, nonzero=None)], "accuracy")
    assert list(rows[0]) == ["model", "engine", "runs in", "stored", "params (M)", "non-zero (M)", "size (MB)", "prefill tok/s",
                             "decode tok/s", "decode ×", "accuracy", "Δ accuracy"]
    assert rows[0]["Δ accuracy"] == pytest.approx(-0.03)
    assert rows[0]["decode ×"] == pytest.approx(1.5)
    assert rows[1]["Δ accuracy"] == 0 and rows[1]["decode ×"] == 1
    assert rows[0]["params (M)"] == 2.0 and rows[0]["non-zero (M)"] == 1.0
    assert rows[2]["non-zero (M)"] is None
    assert rows[0]["runs in"] == "float32" and rows[0]["stored"] == "bf16"


def test_first_row_is_the_baseline_when_none_is_marked():
    rows = table_rows([result("a", 0.9, 10.0), result("b", 0.8, 20.0)], "accuracy")
    assert rows[1]["Δ accuracy"] == pytest.approx(-0.1) and rows[1]["decode ×"] == 2


def test_parameters_nonzeros_size_and_speed_of_a_pruned_model(tmp_path):
    model = tiny_llama()
    total, nonzero = measure.count_parameters(model)
    assert total == sum(p.numel() for p in model.parameters()) and nonzero == total
    masks = magnitude_masks(model, 0.5, scope="matrix")
    apply_masks(model, masks)
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert measure.count_parameters(model) == (total, total - pruned)
    model.save_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    assert measure.weights_size(tmp_path) == (tmp_path / "model.safetensors").stat().st_size
    speed = measure.hf_speed(model, list(range(1, 17)), new_tokens=4, repeats=1)
    assert speed["prefill_tok_s"] > 0 and speed["decode_tok_s"] > 0


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes (tuneforge[bnb])")
def test_a_4bit_model_counts_its_weights_not_its_packed_bytes(tmp_path):
    from transformers import AutoModelForCausalLM

    from tuneforge.models.bnb import bnb_load_arguments

    model = tiny_llama()
    model.save_pretrained(tmp_path)
    total, _ = measure.count_parameters(model)
    nf4 = AutoModelForCausalLM.from_pretrained(tmp_path, **bnb_load_arguments("bnb_nf4"))
    assert any(getattr(p, "quant_state", None) is not None for p in nf4.parameters())  # two weights per byte
    assert measure.count_parameters(nf4) == (total, None)


def test_stored_dtypes_name_what_the_files_hold_most_bytes_first(tmp_path):
    model = tiny_llama()
    model.save_pretrained(tmp_path / "f32")
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    (tmp_path / "mixed").mkdir()
    save_file({"q": torch.zeros(64, 64, dtype=torch.int8), "scale": torch.zeros(64, dtype=torch.bfloat16)},
              tmp_path / "mixed" / "model.safetensors")
    assert measure.stored_dtypes(tmp_path / "f32") == "f32"
    assert measure.stored_dtypes(tmp_path / "bf16") == "bf16"
    assert measure.stored_dtypes(tmp_path / "mixed") == "i8+bf16"  # 4096 bytes of int8 before 128 of bf16
    assert measure.stored_dtypes(tmp_path / "no-such-folder") is None


def test_chart_is_written(tmp_path):
    rows = table_rows([result("base", 0.88, 20.0, baseline=True), result("Wanda 50% + LoRA", 0.87, 21.0)], "accuracy")
    path = plot_compare(rows, "accuracy", tmp_path / "compare.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_row_problems_are_reported_together_before_anything_loads(tmp_path):
    (tmp_path / "fake.gguf").write_text("not a GGUF")
    (tmp_path / "no-config").mkdir()
    rows = [ModelRow(name="a", path=str(tmp_path / "missing")), ModelRow(name="b", path="x.gguf", adapter=str(tmp_path)),
            ModelRow(name="c", path=str(tmp_path / "fake.gguf")), ModelRow(name="d", path=str(tmp_path / "no-config"))]
    with pytest.raises(UserError) as err:
        check_rows(rows)
    lines = str(err.value).splitlines()
    assert lines[0] == "compare: 6 problem(s) with the models list:"
    assert any(line.startswith("  models[0] (a): model '") and "(not found)" in line for line in lines)
    assert "  models[1] (b): path x.gguf does not exist" in lines and any("adapter_config.json" in line for line in lines)
    assert any(line.startswith("  models[2] (c):") and "is not a GGUF file" in line for line in lines)
    assert any(line.startswith("  models[3] (d):") and "has no config.json" in line for line in lines)


def test_config_rejects_two_baselines_and_needs_dev():
    row = {"name": "a", "baseline": True}
    with pytest.raises(UserError, match="at most one row"):
        validate(CompareConfig, {"models": [row, {**row, "name": "b"}], "data": {"dev": {"path": "d.tsv"}}})
    with pytest.raises(UserError, match="data.dev is required"):
        validate(CompareConfig, {"models": [row]})


@pytest.mark.parametrize("path", sorted(RECIPES.glob("prune_*.yaml")) + sorted(RECIPES.glob("distill_*.yaml"))
                         + sorted(RECIPES.glob("compare_*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate_and_open_with_their_command(path):
    from tuneforge.recipes.distill import DistillConfig
    from tuneforge.recipes.prune import PruneConfig

    cls = {"prune": PruneConfig, "distill": DistillConfig, "compare": CompareConfig}[path.name.split("_")[0]]
    load_config(cls, path)
    head = path.read_text(encoding="utf-8").splitlines()[:6]
    assert any(f"tuneforge {path.name.split('_')[0]} recipes/{path.name}" in line for line in head)


def test_a_gguf_row_names_its_tensor_types_most_bytes_first(tmp_path):
    from test_gguf_tiny import tiny_chat_model

    from tuneforge.compress.quant.gguf_writer import write_gguf

    model, tok = tiny_chat_model()
    parameters, types = measure.gguf_storage(write_gguf(model, tok, tmp_path / "m.gguf", "q4_0"))
    assert parameters == sum(p.numel() for p in model.parameters())  # the tied head is stored once, as here
    # 74k block weights at Q4_0 (41 kB) before the tied embedding kept at Q8_0 (24k weights, 25 kB); norms F32
    assert types == ["q4_0", "q8_0", "f32"]
