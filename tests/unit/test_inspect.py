"""`tuneforge inspect` (and `tuneforge models`) on tiny random models saved to temporary folders."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

from tuneforge.errors import UserError
from tuneforge.models import cli as models_cli
from tuneforge.models.inspect import (
    attention_maps,
    format_table,
    inspect_model,
    lora_trainable,
    render,
    token_label,
)

VI = "Giảng viên rất nhiệt tình, tôi yêu Hà Nội."
CORPUS = ["the lecturer is kind and the course is great", "hello world", "xin chào thế giới", "tôi yêu Hà Nội"] * 3


def byte_bpe() -> PreTrainedTokenizerFast:
    """Byte-level BPE with few merges, so rare Vietnamese letters stay split into byte pieces."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def save(model, tok, folder):
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    tok = byte_bpe()
    v = len(tok)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                                         tie_word_embeddings=True))
    bert = BertModel(BertConfig(vocab_size=v, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=64))
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=v, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                             decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id))
    root = tmp_path_factory.mktemp("tiny")
    return {
        "tok": tok,
        "models": {"llama": llama, "bert": bert, "t5": t5},
        "paths": {name: save(m, tok, root / name) for name, m in (("llama", llama), ("bert", bert), ("t5", t5))},
    }


def unique_params(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@pytest.mark.parametrize("name,kind", [("llama", "causal"), ("bert", "encoder"), ("t5", "seq2seq")])
def test_parameter_tables_add_up_to_the_real_model(tiny, name, kind):
    report = inspect_model(tiny["paths"][name])
    params, arch = report["parameters"], report["architecture"]
    assert arch["kind"] == kind
    assert params["total"] == unique_params(tiny["models"][name])
    assert sum(params["by_type"].values()) == params["total"]
    assert "other" not in params["by_type"], params["by_type"]  # every tensor was recognised
    blocks = params["by_block"]
    assert len(blocks) == (4 if kind == "seq2seq" else 2)
    for cat in ("embedding", "attention.q", "attention.k", "attention.v", "attention.o", "mlp", "norm"):
        assert params["by_type"].get(cat), (cat, params["by_type"])


def test_llama_details_gqa_and_tied_head(tiny):
    report = inspect_model(tiny["paths"]["llama"], batch_size=2, seq_len=16)
    arch, params, mem = report["architecture"], report["parameters"], report["memory"]
    assert (arch["layers"], arch["heads"], arch["kv_heads"], arch["head_dim"]) == (2, 4, 2, 8)
    assert arch["tied_embeddings"] is True and "head" not in params["by_type"]
    assert params["by_type"]["attention.k"] == 2 * 32 * (2 * 8)  # layers × hidden × kv_heads·head_dim
    p = params["total"]
    assert mem["train_full"]["weights"] == 4 * p and mem["train_full"]["adamw_states"] == 8 * p
    assert mem["inference"]["bfloat16"]["kv_cache"] == 2 * 2 * 2 * 16 * 2 * 8 * 2  # K,V × layers × b × s × kv × hd × 2 B
    assert mem["inference"]["int4"]["weights"] == p / 2


def test_lora_estimate_matches_peft(tiny):
    from peft import LoraConfig, get_peft_model

    model = tiny["models"]["llama"]
    report = inspect_model(tiny["paths"]["llama"], lora_r=4)
    peft_model = get_peft_model(LlamaForCausalLM(model.config), LoraConfig(r=4, target_modules="all-linear"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert report["memory"]["lora_params"] == trainable
    assert lora_trainable(model, 4) == trainable


def test_seq2seq_counts_cross_attention_and_both_stacks(tiny):
    report = inspect_model(tiny["paths"]["t5"])
    assert report["parameters"]["by_type"]["cross_attention.q"] == 2 * 32 * 32
    assert {b.split()[0] for b in report["parameters"]["by_block"]} == {"encoder", "decoder"}
    assert report["memory"]["inference"]["float32"]["kv_cache"] > 0
    assert inspect_model(tiny["paths"]["bert"])["memory"]["inference"]["float32"]["kv_cache"] == 0


def test_tokens_keep_vietnamese_and_mark_byte_pieces(tiny):
    rows = inspect_model(tiny["paths"]["llama"], tokens=VI)["tokens"]
    assert [r["id"] for r in rows] == tiny["tok"](VI)["input_ids"]
    # The characters each token adds rebuild the text exactly; split letters are shown whole, not as '\ufffd'.
    assert "".join(r["new"] for r in rows) == VI
    split = [r for r in rows if r.get("part")]
    assert split and all(r["text"] in VI and "\ufffd" not in r["text"] for r in split)
    assert token_label(split[0]).endswith(split[0]["part"])


def test_attention_maps_are_row_stochastic_and_causal(tiny):
    maps, rows = attention_maps(tiny["paths"]["llama"], VI, "causal")
    assert maps.shape == (2, 4, len(rows), len(rows))
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(maps, k=1) < 1e-6)  # a decoder never looks ahead


@pytest.mark.parametrize("name", ["bert", "t5"])
def test_attention_png_is_written_for_encoders_and_seq2seq(tiny, tmp_path, name):
    out = tmp_path / f"{name}.png"
    report = inspect_model(tiny["paths"][name], attention=VI, out=str(out), layers="0,-1")
    assert report["attention_png"] == str(out)
    from PIL import Image

    with Image.open(out) as im:
        width, height = im.size
    assert width > height > 300  # 2 layer rows × 4 head columns


def test_bad_attention_input_is_a_user_error(tiny):
    with pytest.raises(UserError, match="--layers"):
        inspect_model(tiny["paths"]["bert"], attention="short text", layers="7")
    with pytest.raises(UserError, match="tokens"):
        inspect_model(tiny["paths"]["bert"], attention=" ".join(["xin chào"] * 40))
    with pytest.raises(UserError, match="not found"):
        inspect_model("/no/such/model")


def test_render_prints_every_section(tiny):
    text = render(inspect_model(tiny["paths"]["llama"], tokens=VI))
    for heading in ("architecture", "parameters per module type", "parameters per block", "inference memory",
                    "training memory", "tokens:"):
        assert heading in text
    assert "Nội" in text or "ộ" in text


def test_format_table_aligns_numbers_right():
    table = format_table(["name", "n"], [["a", "1,000"], ["bbb", "5"]]).splitlines()
    assert table[2].endswith("1,000") and table[3].endswith("    5")


def test_models_verb_lists_known_models_and_rejects_unknown(capsys):
    rows = models_cli.models("list")
    names = {r["name"]: r for r in rows}
    assert {"smollm2-135m-instruct", "all-minilm-l6-v2"} <= set(names)
    assert all(r["state"] in ("ready", "not imported", "not installed", "broken package") for r in rows)
    parser = argparse.ArgumentParser()
    models_cli.add_arguments(parser)
    assert models_cli.run(parser.parse_args([])) == 0
    assert "smollm2-135m-instruct (default)" in capsys.readouterr().out
    with pytest.raises(UserError, match="not a known model"):
        models_cli.run(parser.parse_args(["import", "no-such-model"]))
