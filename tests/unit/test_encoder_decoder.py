"""Encoder-decoder models through the CLI: finetune (LoRA, full), evaluate and inspect on a tiny random T5.

The T5 and its byte-level BPE tokenizer are built here from a few sentences (no download); a run takes seconds.
"""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForSeq2SeqLM, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

from tuneforge import cli
from tuneforge.models.inspect import lora_trainable

INSTRUCTION = "What is the sentiment of this text? Answer with one word: negative or positive."
CORPUS = [INSTRUCTION, "Text: a warm , funny film", "dull and far too long", "I loved every minute",
          "the plot makes no sense", "bộ phim rất hay", "diễn viên đóng dở", "a gem", "a mess", "positive negative"]


def t5_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE over the sentiment prompt and rows, appending </s> as T5's tokenizer does."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(CORPUS * 3, trainer)
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", core.token_to_id("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def tiny_t5_dir(tmp_path_factory):
    torch.manual_seed(0)
    tok = t5_tokenizer()
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                   dropout_rate=0.0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                   decoder_start_token_id=tok.pad_token_id)
    folder = tmp_path_factory.mktemp("tiny-t5")
    T5ForConditionalGeneration(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_recipe(tmp_path, model, data, **extra) -> str:
    cols = "text_column: sentence, label_column: label"
    lines = [f"model: {model}", "dtype: float32", f"output_dir: {tmp_path / 'runs'}", "name: t5",
             "task: {name: sentiment}", f"data:\n  train: {{path: {data}, {cols}}}\n  dev: {{path: {data}, {cols}}}",
             "lora: {r: 8, alpha: 16, dropout: 0.0}",
             "train: {bf16: 'false', batch_size: 2, lr: 1.0e-2, epochs: 4, log_every: 1}", "eval: {batch_size: 8}"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    path = tmp_path / "recipe.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def predictions(run_dir) -> list[str]:
    return [json.loads(line)["output"] for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


def test_encoding_puts_labels_on_the_answer_only(tiny_t5_dir):
    from tuneforge.data.seq2seq import Seq2SeqLoss, collate_seq2seq, encode_row, prompt_to_source
    from tuneforge.tasks.sentiment import SentimentTask

    tok, task = t5_tokenizer(), SentimentTask(labels=["negative", "very positive"])  # targets of 2 and 3+ tokens
    rows = [{"text": "a gem", "label": 1}, {"text": "dull and far too long", "label": 0}]
    feats = [encode_row(tok, task, row, max_len=64) for row in rows]
    assert feats[0]["labels"] == tok(text_target="very positive")["input_ids"]  # the answer and </s>, no prompt token
    assert feats[1]["labels"] == tok(text_target="negative")["input_ids"]
    source = prompt_to_source(task.prompt(rows[0]))  # what scoring feeds the encoder
    assert tok.decode(feats[0]["input_ids"], skip_special_tokens=True).strip() == source
    assert source.startswith("What is the sentiment of this text?") and source.endswith("Text: a gem")
    whole, cut = feats[1]["input_ids"], encode_row(tok, task, rows[1], max_len=6)
    assert cut["truncated"] and cut["labels"] == feats[1]["labels"]
    assert cut["input_ids"] == whole[:3] + whole[-3:]  # the middle goes: the instruction's start and the text's end stay

    model = T5ForConditionalGeneration.from_pretrained(tiny_t5_dir)
    batch = collate_seq2seq(feats, tok.pad_token_id)
    loss_sum, n = Seq2SeqLoss(model)(**batch)
    assert int(n) == sum(len(f["labels"]) for f in feats)  # padding of the shorter target is not counted
    torch.testing.assert_close(loss_sum / n, model(**batch).loss)  # the model's own mean over target tokens


def test_lora_finetune_then_evaluate_a_t5(tiny_t5_dir, sentiment_tsv, tmp_path):
    recipe = write_recipe(tmp_path, tiny_t5_dir, sentiment_tsv)
    assert cli.main(["finetune", recipe]) == 0
    run = tmp_path / "runs" / "t5"
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_2_SEQ_LM"
    assert set(adapter["target_modules"]) == {"q", "k", "v", "o", "wi", "wo"}  # all-linear found T5's own names
    seen = losses(run)
    assert len(seen) == 16 and sum(seen[-4:]) < 0.8 * sum(seen[:4]), seen  # it learns
    result = json.loads((run / "metrics.json").read_text())
    assert result["before"]["unparseable"] == 8  # the random model writes no label
    assert result["after"]["unparseable"] < 8  # the trained one answers with labels
    assert {"accuracy", "macro_f1"} <= set(result["after"])
    base = T5ForConditionalGeneration.from_pretrained(tiny_t5_dir)
    assert result["train"]["trainable_params"] == lora_trainable(base, 8)  # r·(in+out) on every linear, nothing else

    # evaluate: the saved adapter on the base scores as the model did at the end of training
    assert cli.main(["evaluate", recipe, f"adapter={run / 'adapter'}", "name=ev"]) == 0
    ev = tmp_path / "runs" / "ev"
    scored = json.loads((ev / "metrics.json").read_text())
    assert scored["rows"] == 8 and scored["metrics"]["accuracy"] == result["after"]["accuracy"]
    assert predictions(ev) == predictions(run)


def test_full_finetune_of_a_t5_saves_a_model_that_evaluate_loads(tiny_t5_dir, sentiment_tsv, tmp_path):
    recipe = write_recipe(tmp_path, tiny_t5_dir, sentiment_tsv, method="full", eval_before="false")
    assert cli.main(["finetune", recipe]) == 0
    run = tmp_path / "runs" / "t5"
    seen = losses(run)
    assert sum(seen[-4:]) < 0.8 * sum(seen[:4]), seen
    assert not (run / "adapter").exists()
    trained = AutoModelForSeq2SeqLM.from_pretrained(run / "model")
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir)
    before, after = base.state_dict(), trained.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("decoder.") for k in changed)
    result = json.loads((run / "metrics.json").read_text())
    assert (run / "model" / "tokenizer.json").exists()

    assert cli.main(["evaluate", recipe, f"model={run / 'model'}", "name=ev"]) == 0
    scored = json.loads((tmp_path / "runs" / "ev" / "metrics.json").read_text())
    assert scored["metrics"]["accuracy"] == result["after"]["accuracy"]
    assert predictions(tmp_path / "runs" / "ev") == predictions(run)


def test_inspect_shows_the_encoder_and_the_decoder(tiny_t5_dir, capsys):
    assert cli.main(["inspect", str(tiny_t5_dir)]) == 0
    out = capsys.readouterr().out
    model = T5ForConditionalGeneration.from_pretrained(tiny_t5_dir)
    encoder = sum(p.numel() for n, p in model.named_parameters() if n.startswith("encoder.") and "embed_tokens" not in n)
    decoder = sum(p.numel() for n, p in model.named_parameters() if n.startswith("decoder.") and "embed_tokens" not in n)
    rows = {line.split()[0]: line.split() for line in out.split("parameters per part")[1].splitlines()[3:6]}
    assert rows["encoder"][1:3] == ["2", f"{encoder:,}"] and rows["decoder"][1:3] == ["2", f"{decoder:,}"]
    assert rows["shared"][3] == f"{model.shared.weight.numel():,}"
    assert "encoder layers     2" in out and "decoder layers     2" in out
    assert "encoder  1" in out and "decoder  1" in out  # the per-block table lists both stacks


def test_freeze_trains_the_top_decoder_blocks_and_share_prefix_is_off(tiny_t5_dir, sentiment_tsv, tmp_path, capsys):
    from tuneforge.config import FinetuneConfig, load_config
    from tuneforge.training.setup import setup

    recipe = write_recipe(tmp_path, tiny_t5_dir, sentiment_tsv)
    s = setup(load_config(FinetuneConfig, recipe, ["method=freeze", "freeze.trainable_blocks=1", "train.share_prefix=true"]))
    assert "train.share_prefix is off for an encoder-decoder model" in capsys.readouterr().out
    assert s.encoder_decoder and s.loss_module.share_prefix is False
    trainable = {n for n, p in s.model.named_parameters() if p.requires_grad}
    assert any(n.startswith("decoder.block.1.") for n in trainable) and "decoder.final_layer_norm.weight" in trainable
    assert not any(n.startswith(("decoder.block.0.", "encoder.block.")) for n in trainable)


def test_t5_bad_input_gets_one_clear_error(tiny_t5_dir, sentiment_tsv, tmp_path, capsys):
    recipe = write_recipe(tmp_path, tiny_t5_dir, sentiment_tsv)
    assert cli.main(["finetune", recipe, "lora.target_modules=[q_proj,v_proj]"]) == 2
    err = capsys.readouterr().err
    assert "lora.target_modules" in err and "k, o, q, v, wi, wo" in err
    assert cli.main(["finetune", recipe, "task.name=chat"]) == 2
    assert "task.name: 'chat'" in capsys.readouterr().err
    # a verb that runs decoder-only models says so instead of loading the decoder half (or failing deep inside)
    pe = tmp_path / "pe.yaml"
    lines = (tmp_path / "recipe.yaml").read_text().replace("name: t5", "name: pe").splitlines()
    pe.write_text("\n".join(line for line in lines if not line.startswith(("lora:", "train:"))) + "\n", encoding="utf-8")
    assert cli.main(["prompt-eval", str(pe)]) == 2
    assert "is an encoder-decoder model (t5)" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "t5").exists() and not (tmp_path / "runs" / "pe").exists()


def test_the_logged_loss_is_the_mean_over_answer_tokens(tiny_t5_dir, sentiment_tsv, tmp_path):
    """fit's first logged loss (before any update) is the model's own mean loss on that batch: the batches are
    (source, target) pairs and every label token counts, none of the prompt's."""
    from tuneforge.config import FinetuneConfig, load_config
    from tuneforge.data.seq2seq import collate_seq2seq
    from tuneforge.training.loop import fit
    from tuneforge.training.setup import setup

    recipe = write_recipe(tmp_path, tiny_t5_dir, sentiment_tsv)
    s = setup(load_config(FinetuneConfig, recipe, ["method=full", "train.batch_size=4", "train.max_steps=1"]))
    batch = collate_seq2seq([s.examples[i] for i in s.batches[0]], s.tok.pad_token_id)
    with torch.no_grad():
        expected = s.model(**batch).loss.item()
    fit(s)
    assert s.history[0]["loss"] == pytest.approx(expected, rel=1e-5)
    assert s.history[0]["tokens"] == int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum())
