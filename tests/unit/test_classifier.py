"""The classification-head recipe end to end on a tiny random BERT and a separable toy data set."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from tuneforge.config import load_config, validate
from tuneforge.errors import UserError
from tuneforge.training.classifier import (
    ClassificationLoss,
    ClassifierConfig,
    collate_rows,
    count_rows,
    encode_rows,
    finetune_classifier,
    is_classifier_config,
    predict,
    unknown_share,
)

GOOD = ["good", "great", "lovely", "tuyệt", "vời", "fine"]
BAD = ["bad", "awful", "poor", "tệ", "chán", "boring"]
FILLER = ["the", "movie", "was", "really", "quite", "film"]


def toy_rows(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = rng.sample(FILLER, rng.randint(1, 4)) + rng.sample(GOOD if label else BAD, 2)
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_tsv(path, rows):
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *GOOD, *BAD, *FILLER]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # from_pretrained reads vocab.txt on every transformers version; transformers 5 dropped the `vocab_file=`
    # keyword of the constructor and silently builds a 5-token vocabulary, so every word became [UNK].
    tok = BertTokenizerFast.from_pretrained(str(root), do_lower_case=True, strip_accents=False)
    assert len(tok) == len(vocab) and tok.unk_token_id not in tok(" ".join(GOOD + BAD + FILLER))["input_ids"]
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=64,
                                                     max_position_embeddings=64, num_labels=2))
    folder = root / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


# LoRA on a randomly initialised encoder must move the frozen random features through rank-4 updates that start
# at zero: it sits on the loss plateau far longer than a full fine-tune, so it gets the higher learning rate LoRA
# usually runs with and a few more passes (seeds 0-5 of the tiny BERT: dev accuracy 0.96-1.0; 2e-3 x 4 stays at 0.5).
LORA_TRAIN = {"lr": 1e-2, "epochs": 6}


def run_config(tmp_path, model, method, **train):
    return validate(ClassifierConfig, run_data(tmp_path, model, method, **train))


def run_data(tmp_path, model, method, **train) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    if method == "lora":
        train = {**LORA_TRAIN, **train}
    data = {
        "head": "classifier",
        "name": f"toy-{method}",
        "output_dir": str(tmp_path / "runs"),
        "model": model,
        "method": method,
        "task": {"name": "sentiment", "labels": ["negative", "positive"]},
        "data": {
            "train": {"path": write_tsv(tmp_path / "train.tsv", toy_rows(192, 0)), "text_column": "sentence",
                      "label_column": "label"},
            "dev": {"path": write_tsv(tmp_path / "dev.tsv", toy_rows(24, 1)), "text_column": "sentence",
                    "label_column": "label"},
        },
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"epochs": 4, "batch_size": 8, "lr": 2e-3, "max_seq_len": 16, "warmup_ratio": 0.0,
                  "bf16": "false", "log_every": 2, **train},
        "eval": {"batch_size": 4},
    }
    return data


@pytest.mark.parametrize("method", ["full", "lora"])
def test_finetune_classifier_learns_and_writes_a_complete_run(tmp_path, tiny_bert, method):
    run = finetune_classifier(run_config(tmp_path, tiny_bert, method))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == "sentiment" and metrics["method"] == method
    assert metrics["after"]["accuracy"] >= 0.95, metrics["after"]
    assert metrics["after"]["accuracy"] > metrics["before"]["accuracy"]
    assert metrics["after"]["macro_f1"] >= 0.95  # both classes predicted, not one
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0] - 0.05, losses  # the training loss really fell
    train = metrics["train"]
    assert train["tokens"] > 0 and train["seconds"] > 0 and train["tokens_per_second"] > 0
    assert 0 < train["trainable_params"] <= train["total_params"]
    if method == "full":
        assert train["trainable_params"] == train["total_params"]
        assert (run / "model" / "config.json").exists()
    else:
        assert train["trainable_params"] < train["total_params"] / 2
        with safe_open(run / "adapter" / "adapter_model.safetensors", "pt") as f:
            keys = list(f.keys())
        assert any("classifier" in k for k in keys) and any("lora_A" in k for k in keys)
    lines = (run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 24 and json.loads(lines[0])["prediction"] in ("negative", "positive")
    assert (run / "metrics.jsonl").read_text().count("\n") >= 2
    assert not list(run.parent.glob(".*.tmp"))  # the atomic folder was renamed
    report = (run / "report.md").read_text(encoding="utf-8")
    assert f"tuneforge finetune: {run.name}" in report and "after (" in report  # titled by the run, not the staging folder
    assert (run / "loss_curve.png").stat().st_size > 0 and (run / "metrics.png").stat().st_size > 0
    assert metrics["artifact"] == str(run / ("model" if method == "full" else "adapter"))


def test_lora_adapter_reloads_with_the_same_predictions(tmp_path, tiny_bert):
    from tuneforge.data.readers import read_rows
    from tuneforge.models import load_model
    from tuneforge.tasks.sentiment import SentimentTask

    cfg = run_config(tmp_path, tiny_bert, "lora")
    run = finetune_classifier(cfg)
    saved = [json.loads(x)["prediction"] for x in (run / "predictions.jsonl").read_text().splitlines()]
    model, tok = load_model(tiny_bert, adapter=str(run / "adapter"), kind="classifier", num_labels=2,
                            dtype="float32", device="cpu")
    rows = SentimentTask().prepare(read_rows(cfg.data.dev), cfg.data.dev.path)
    preds = predict(model, tok, encode_rows(tok, rows, 16), batch_size=5, bf16=False)
    assert [["negative", "positive"][p] for p in preds] == saved


def test_collate_pads_each_batch_and_the_loss_sums_over_rows(tiny_bert):
    tok = BertTokenizerFast.from_pretrained(tiny_bert)
    feats = encode_rows(tok, [{"text": t, "label": y} for t, y in toy_rows(5, 3)], 16)
    batch = collate_rows(feats, tok.pad_token_id)
    lengths = [len(f["input_ids"]) for f in feats]
    assert len(set(lengths)) > 1 and batch["input_ids"].shape == (5, max(lengths))  # padded to its own longest row
    for row, (f, n) in enumerate(zip(feats, lengths, strict=True)):
        assert batch["input_ids"][row, :n].tolist() == f["input_ids"]
        assert (batch["input_ids"][row, n:] == tok.pad_token_id).all() and int(batch["attention_mask"][row].sum()) == n
    assert batch["labels"].tolist() == [f["labels"] for f in feats] and count_rows(batch) == 5
    model = BertForSequenceClassification.from_pretrained(tiny_bert).eval()
    loss_sum, rows = ClassificationLoss(model)(**batch)
    assert rows == 5
    torch.testing.assert_close(loss_sum / 5, model(**batch).loss)  # the mean the loop divides it into
    short = lengths.index(min(lengths))  # padding is masked: a padded row scores as it does alone
    alone = model(**{k: v for k, v in collate_rows([feats[short]], tok.pad_token_id).items() if k != "labels"}).logits
    torch.testing.assert_close(alone[0], model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[short],
                               rtol=1e-5, atol=1e-5)


def trained_weights(run: Path) -> dict:
    from safetensors.torch import load_file

    folder = run / "model" if (run / "model").exists() else run / "adapter"
    return load_file(next(folder.glob("*.safetensors")))


@pytest.mark.parametrize("method", ["full", "lora"])
def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, tiny_bert, monkeypatch, capsys, method):
    import re

    from tuneforge.training import classifier
    from tuneforge.training.loop import Interrupted

    full = finetune_classifier(run_config(tmp_path / "a", tiny_bert, method, epochs=1))  # 24 steps
    original, calls = classifier.collate_rows, []

    def ctrl_c_in_step_5(examples, pad_id):
        calls.append(1)
        if len(calls) == 5:  # the 5th batch: 4 optimizer steps are done
            raise KeyboardInterrupt
        return original(examples, pad_id)

    monkeypatch.setattr(classifier, "collate_rows", ctrl_c_in_step_5)
    cut = run_config(tmp_path / "b", tiny_bert, method, epochs=1)
    cut.eval_before = False  # no dev scoring before training: the 5th collate is training's
    with pytest.raises(Interrupted):
        finetune_classifier(cut)
    monkeypatch.setattr(classifier, "collate_rows", original)
    run = tmp_path / "b" / "runs" / f"toy-{method}"
    hint = re.search(r"resume with: tuneforge finetune <config> train\.resume=(\S+)", capsys.readouterr().err)
    assert hint and Path(hint[1]) == run / "checkpoints" / "step-4"
    assert not (run / "metrics.json").exists()

    resumed = finetune_classifier(run_config(tmp_path / "b", tiny_bert, method, epochs=1, resume="latest"))
    assert resumed == run and not (run.parent / f"toy-{method}-2").exists()  # finished in the interrupted run's folder
    before, after = trained_weights(full), trained_weights(resumed)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 20 and metrics["train"]["resumed_from_step"] == 4
    assert metrics["after"] == json.loads((full / "metrics.json").read_text())["after"]


def test_eval_every_scores_dev_mid_run_without_changing_the_training(tmp_path, tiny_bert):
    plain = finetune_classifier(run_config(tmp_path / "a", tiny_bert, "full"))  # 96 steps
    run = finetune_classifier(run_config(tmp_path / "b", tiny_bert, "full", eval_every=12))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    dev = [r for r in rows if "dev_accuracy" in r]
    assert [r["step"] for r in dev] == list(range(12, 96, 12))  # not at step 96: the final score is metrics.json's "after"
    assert all(0.0 <= r["dev_accuracy"] <= 1.0 and 0.0 <= r["dev_macro_f1"] <= 1.0 for r in dev)
    assert dev[0]["dev_accuracy"] < dev[-1]["dev_accuracy"]  # scored the model as it trained: chance early, learnt later
    assert [r for r in rows if "loss" in r]  # the training rows are still there
    # scoring mid-run leaves the model in training mode (dropout on) and draws no random numbers
    before, after = trained_weights(plain), trained_weights(run)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_second_run_of_the_same_name_keeps_the_first(tmp_path, tiny_bert):
    first = finetune_classifier(run_config(tmp_path, tiny_bert, "full", max_steps=2))
    kept = (first / "metrics.json").read_bytes()
    second = finetune_classifier(run_config(tmp_path, tiny_bert, "full", max_steps=2))
    assert first == tmp_path / "runs" / "toy-full" and second == tmp_path / "runs" / "toy-full-2"
    assert (first / "metrics.json").read_bytes() == kept and (first / "model" / "config.json").exists()
    assert (second / "metrics.json").exists() and "tuneforge finetune: toy-full-2" in (second / "report.md").read_text()


def test_unknown_share_flags_a_tokenizer_without_its_vocabulary(tiny_bert):
    rows = [{"text": t, "label": y} for t, y in toy_rows(8, 2)]
    good = BertTokenizerFast.from_pretrained(tiny_bert)
    assert unknown_share(good, encode_rows(good, rows, 16)) == 0.0
    blind = BertTokenizerFast(vocab={"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3})  # knows no word
    assert unknown_share(blind, encode_rows(blind, rows, 16)) == 1.0


def test_config_checks_and_routing():
    assert is_classifier_config({"head": "classifier"}) and not is_classifier_config({"method": "lora"})
    with pytest.raises(UserError) as e:
        validate(ClassifierConfig, {"method": "freeze", "lora": {"rank": 4}})
    assert "method:" in str(e.value) and "lora.rank: unknown key" in str(e.value)
    with pytest.raises(UserError) as e:
        validate(ClassifierConfig, {"task": {"name": "translation"}})
    assert "data.train is required" in str(e.value) and "needs a labelled task" in str(e.value)


def test_keys_a_classifier_cannot_use_are_refused_by_name(tmp_path, tiny_bert, capsys):
    data = run_data(tmp_path, tiny_bert, "full")
    for key, value in [("adapter", "runs/x/adapter"), ("dtype", "bfloat16")]:
        with pytest.raises(UserError, match=f"{key}: a classifier run"):
            validate(ClassifierConfig, {**data, key: value})
    for key, value in [("strategy", "few_shot"), ("max_new_tokens", 4)]:
        with pytest.raises(UserError, match=f"eval.{key}: a classifier head scores with one forward pass"):
            validate(ClassifierConfig, {**data, "eval": {key: value}})
    with pytest.raises(UserError, match="gradient_checkpointing"):
        validate(ClassifierConfig, {**data, "train": {**data["train"], "gradient_checkpointing": True}})
    validate(ClassifierConfig, {**data, "dtype": "float32"})  # what it trains in anyway


@pytest.mark.parametrize("recipe", ["recipes/classifier_sst2_minilm.yaml", "recipes/classifier_uitvsfc_minilm.yaml"])
def test_shipped_recipes_validate(recipe):
    cfg = load_config(ClassifierConfig, Path(__file__).parents[2] / recipe)
    assert cfg.head == "classifier" and cfg.model == "all-minilm-l6-v2"
