"""torchao int8 on a tiny random Llama: smaller on disk, reload gives the same model, logits close to float."""

from __future__ import annotations

import pytest
import torch
from test_gguf_tiny import tiny_chat_model

from tuneforge.compress.measure import weights_size
from tuneforge.compress.quant.torchao import (
    is_torchao_quantized,
    load_quantized,
    quantize_folder,
)
from tuneforge.errors import UserError
from tuneforge.models.saving import save_model


@pytest.fixture(scope="module")
def float_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("float")
    model, tok = tiny_chat_model(seed=3, layers=3)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def logits(model, tok):
    ids = torch.tensor([tok("Thủ đô của Việt Nam là Hà Nội. The quick brown fox jumps over the lazy dog.")["input_ids"]])
    with torch.inference_mode():
        return model(ids).logits[0].float()


# Activations quantized per token on top of the weights add noise; a random model amplifies both.
@pytest.mark.parametrize("method, group_size, max_rel", [("int8_weight_only", None, 0.05), ("int8_weight_only", 16, 0.05),
                                                         ("int8_dynamic", None, 0.1)])
def test_int8_saves_smaller_reloads_identically_and_stays_close(float_folder, tmp_path, method, group_size, max_rel):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(float_folder))
    ref = logits(AutoModelForCausalLM.from_pretrained(str(float_folder), dtype=torch.float32), tok)
    quantized = quantize_folder(float_folder, method, "float32", group_size)
    assert is_torchao_quantized(quantized)
    got = logits(quantized, tok)
    save_model(quantized, tok, tmp_path / "model")
    assert weights_size(tmp_path / "model") < 0.7 * weights_size(float_folder)

    reloaded = load_quantized(tmp_path / "model")
    assert is_torchao_quantized(reloaded)
    torch.testing.assert_close(logits(reloaded, tok), got, rtol=0, atol=1e-5)
    # int8 noise is small against the logits themselves, and the greedy choice rarely moves.
    rel = (got - ref).norm() / ref.norm()
    print(f"{method}: relative logit error {rel:.4f}")
    assert rel < max_rel, f"relative logit error {rel:.4f}"
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9
    assert rel > 0  # it was really quantized


def test_int8_groups_of_weights_err_less_than_one_scale_per_row(float_folder, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(float_folder))
    ref = logits(AutoModelForCausalLM.from_pretrained(str(float_folder), dtype=torch.float32), tok)
    errors = [(logits(quantize_folder(float_folder, "int8_weight_only", "float32", g), tok) - ref).norm() for g in (None, 8)]
    assert errors[1] < errors[0]


def test_unknown_method_and_missing_folder_are_user_errors(float_folder, tmp_path):
    with pytest.raises(UserError, match="int4"):
        quantize_folder(float_folder, "int4", "float32")
    with pytest.raises(UserError, match="config.json"):
        load_quantized(tmp_path)
