"""`tuneforge inspect` (and `tuneforge models`) on tiny random models saved to temporary folders."""

from __future__ import annotations

import argparse
from pathlib import Path

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

from tuneforge import cli, cli_args
from tuneforge.errors import UserError
from tuneforge.models import inspect as inspect_module
from tuneforge.models import loading
from tuneforge.models.inspect import (
    attention_maps,
    attention_short_name,
    inspect_model,
    lora_trainable,
    render,
    text_table,
    token_label,
)
from tuneforge.models.known import DEFAULT_MODEL
from tuneforge.recipes import models as models_cli

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
    table = text_table(["name", "n"], [["a", "1,000"], ["bbb", "5"]]).splitlines()
    assert table[2].endswith("1,000") and table[3].endswith("    5")


def test_models_verb_lists_known_models_and_rejects_unknown(capsys):
    rows = models_cli.models("list")
    names = {r["name"]: r for r in rows}
    assert {"smollm2-135m-instruct", "all-minilm-l6-v2"} <= set(names)
    assert all(r["state"] in ("ready", "not imported", "not installed", "broken package") for r in rows)
    parser = argparse.ArgumentParser()
    cli_args.models(parser)
    assert models_cli.run(parser.parse_args([])) == 0
    assert "smollm2-135m-instruct (default)" in capsys.readouterr().out
    with pytest.raises(UserError, match="not a known model"):
        models_cli.run(parser.parse_args(["import", "no-such-model"]))


# -- bad input: one clear error naming the flag, before any weights load ----------------------------------


@pytest.fixture()
def no_weights(monkeypatch):
    """Fail the test if the weights would be loaded: the checks must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model's weights were loaded before the input was checked")

    monkeypatch.setattr(loading, "load_model", refuse)


def test_attention_short_name_for_the_default_model_folders_and_hub_ids(tmp_path):
    assert attention_short_name(None) == DEFAULT_MODEL
    assert attention_short_name("smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert attention_short_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "SmolLM2-135M-Instruct"
    (tmp_path / "tiny").mkdir()
    assert attention_short_name(str(tmp_path / "tiny")) == "tiny"
    (tmp_path / "runs" / "sst2-lora" / "model").mkdir(parents=True)
    assert attention_short_name(str(tmp_path / "runs" / "sst2-lora" / "model")) == "sst2-lora-model"


def test_attention_on_the_default_model_names_it(tmp_path, monkeypatch, capsys):
    """No MODEL argument: the config of the embedded model is read (no weights); the maps are faked."""
    fake = np.full((30, 9, 2, 2), 0.5, dtype=np.float32)
    rows = [{"text": "hello", "piece": "hello", "special": False}, {"text": " world", "piece": "Ġworld", "special": False}]
    seen = {}

    def fake_maps(model, text, kind):
        seen["model"] = model
        return fake[: inspect_module.load_model_config(model)[0].num_hidden_layers], rows

    monkeypatch.setattr(inspect_module, "attention_maps", fake_maps)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["inspect", "--attention", "hello world", "--layers", "0"]) == 0
    png = tmp_path / "runs" / "inspect" / f"{DEFAULT_MODEL}-attention.png"
    assert png.is_file() and seen["model"] is None
    assert f"attention maps: {Path('runs') / 'inspect' / png.name}" in capsys.readouterr().out
    out = tmp_path / "new" / "deeper" / "att.png"  # missing folders are made
    assert cli.main(["inspect", "--attention", "hello world", "--layers", "0", "--out", str(out)]) == 0
    assert out.is_file() and not list(out.parent.glob(".*tmp*"))


@pytest.mark.integration
def test_attention_on_the_real_default_model(tmp_path):
    out = tmp_path / "att.png"
    report = inspect_model(None, attention="hello world", layers="0", out=str(out))
    assert report["attention_png"] == str(out) and out.stat().st_size > 0
    assert report["model"] == "(embedded default)"


@pytest.mark.parametrize("name,kind,fitting", [("llama", "seq2seq", "causal, classifier, encoder"),
                                               ("t5", "causal", "seq2seq, classifier, encoder")])
def test_a_kind_that_does_not_fit_the_model_is_one_error(tiny, capsys, name, kind, fitting):
    assert cli.main(["inspect", tiny["paths"][name], "--kind", kind]) == 2
    err = capsys.readouterr().err
    model_type = tiny["models"][name].config.model_type
    assert err.strip() == (f"error: --kind {kind} does not fit this model (model_type {model_type}); "
                           f"use --kind auto or {fitting}")
    with pytest.raises(UserError, match=f"--kind {kind} does not fit"):
        inspect_model(tiny["paths"][name], kind=kind)


@pytest.mark.parametrize("flag", ["--batch-size", "--seq-len", "--lora-r", "--num-labels"])
@pytest.mark.parametrize("value", ["0", "-4", "two"])
def test_counts_must_be_positive_whole_numbers(tiny, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        cli.main(["inspect", tiny["paths"]["llama"], flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: " in err and "give" in err and "1 or more" in err
    assert "Traceback" not in err


def test_counts_are_checked_for_python_callers_too(tiny):
    for kwargs, flag in (({"seq_len": 0}, "--seq-len"), ({"batch_size": -4}, "--batch-size"),
                         ({"lora_r": -1}, "--lora-r"), ({"num_labels": 0}, "--num-labels")):
        with pytest.raises(UserError, match=f"^{flag} "):
            inspect_model(tiny["paths"]["llama"], **kwargs)
    report = inspect_model(tiny["paths"]["llama"], seq_len=1, batch_size=1, lora_r=1)
    assert report["memory"]["seq_len"] == 1 and report["memory"]["train_lora"]["activations"] > 0


def test_out_under_a_file_is_reported_before_the_model_loads(tiny, tmp_path, capsys, no_weights):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    bad = afile / "att.png"
    assert cli.main(["inspect", tiny["paths"]["llama"], "--attention", "hello world", "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {bad}: {afile} is a file, not a folder") and err.count("\n") == 1
    deeper = afile / "sub" / "att.png"
    with pytest.raises(UserError, match=f"--out .*{afile} is a file"):
        inspect_model(tiny["paths"]["llama"], attention="hello world", out=str(deeper))
    assert afile.read_text() == "not a folder"


@pytest.mark.parametrize("case,message", [("folder", "is a folder"), ("jpg", "ending in .png")])
def test_out_must_be_a_png_file_path(tiny, tmp_path, no_weights, case, message):
    out = tmp_path if case == "folder" else tmp_path / "att.jpg"
    with pytest.raises(UserError, match=f"^--out .*{message}"):
        inspect_model(tiny["paths"]["llama"], attention="hello world", out=str(out))
    assert list(tmp_path.iterdir()) == []


def test_bad_layers_are_reported_before_the_model_loads(tiny, tmp_path, no_weights):
    with pytest.raises(UserError, match="--layers '7': the model has layers 0..1"):
        inspect_model(tiny["paths"]["llama"], attention="hello world", layers="7", out=str(tmp_path / "a.png"))


def test_attention_flags_without_attention_are_an_error(capsys):
    from tuneforge.cli import main

    assert main(["inspect", "--out", "x.png", "--layers", "0"]) == 2
    assert "--out and --layers only apply with --attention TEXT" in capsys.readouterr().err
