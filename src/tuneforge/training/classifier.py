"""Fine-tune an encoder (BERT-like) with a sequence-classification head: full or LoRA.

The transfer-learning arm beside the decoder LoRA: instead of generating a label word, a small linear head
on the encoder's [CLS] vector picks the label. setup_classifier(cfg) builds a training Setup (the encoder, a
per-row cross-entropy, its collate and dev scorer) and training.loop.fit trains it like every other run, so
train.resume, save_every, eval_every, group_by_length and torchrun sharding work here too.
`finetune_classifier(cfg)` scores the dev split before and after training and writes a run folder
(runs/<name>, or runs/<name>-2 when that exists):

    runs/<name>/config.yaml, metrics.json, metrics.jsonl, predictions.jsonl, model/ (full) or adapter/ (lora)

metrics.json = {task, method, model, labels, before, after, train: {tokens, seconds, tokens_per_second,
trainable_params, total_params, steps}}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from tqdm import tqdm

from tuneforge.config import LoraConfig, RunConfig, TrainConfig
from tuneforge.errors import UserError
from tuneforge.fileio import write_jsonl
from tuneforge.models.dtypes import use_bf16
from tuneforge.report.run_report import write_run_report
from tuneforge.runs import complete_run
from tuneforge.tasks.splits import build_task, load_split
from tuneforge.training.loop import announce, fit, scored_once, validate
from tuneforge.training.optim import make_accelerator
from tuneforge.training.setup import Setup, assemble, checkpoint_to_resume, resolve_run_dir, save_artifact

DEFAULT_ENCODER = "all-minilm-l6-v2"


class ClassifierConfig(RunConfig):
    """`tuneforge finetune` with `head: classifier`: an encoder plus a fresh classification head."""

    model: str | None = Field(DEFAULT_ENCODER, description="an encoder: registry name, local folder or HF hub id")
    head: Literal["classifier"] = Field("classifier", description="marks this config as a classification-head run")
    method: Literal["full", "lora"] = Field("lora", description="full: every weight trains; lora: adapters + the head")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig, description="the loop; max_seq_len truncates each text")
    eval_before: bool = Field(True, description="score the untrained head too (the 'before' column, about chance)")

    @model_validator(mode="after")
    def _check(self):
        problems = []
        if self.data.train is None:
            problems.append("data.train is required for a classifier run")
        if self.data.dev is None:
            problems.append("data.dev is required for a classifier run (before/after scores)")
        if self.task.name != "sentiment":
            problems.append(f"task.name: a classifier head needs a labelled task (sentiment), got '{self.task.name}'")
        # keys a classifier run would otherwise ignore without a word
        if self.adapter:
            problems.append("adapter: a classifier run trains a fresh head on `model`; it cannot continue an adapter")
        if self.dtype not in ("auto", "float32"):
            problems.append(f"dtype: a classifier run trains fp32 weights (train.bf16 turns on bf16 autocast), "
                            f"got '{self.dtype}'")
        if self.eval.strategy != "zero_shot" or self.eval.max_new_tokens is not None:
            key = "eval.strategy" if self.eval.strategy != "zero_shot" else "eval.max_new_tokens"
            problems.append(f"{key}: a classifier head scores with one forward pass, without prompts or generation")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def is_classifier_config(data: dict) -> bool:
    """For the CLI's routing: a raw YAML mapping asks for this recipe when it says `head: classifier`."""
    if not isinstance(data, dict) or "head" not in data:
        return False
    if data["head"] != "classifier":
        raise UserError(f"head: '{data['head']}' is not a head tuneforge trains; `head: classifier` puts a "
                        "classification head on an encoder (see recipes/classifier_sst2_minilm.yaml)")
    return True


# -- data -------------------------------------------------------------------------------------------------


def encode_rows(tok, rows: list[dict], max_len: int) -> list[dict]:
    enc = tok([r["text"] for r in rows], truncation=True, max_length=max_len)
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": r["label"]}
        for ids, mask, r in zip(enc["input_ids"], enc["attention_mask"], rows, strict=True)
    ]


def unknown_share(tok, features: list[dict]) -> float:
    """The share of text tokens (special tokens aside) that the tokenizer mapped to its unknown token."""
    unk = tok.unk_token_id
    if unk is None:
        return 0.0
    special = set(tok.all_special_ids) - {unk}
    ids = [i for f in features for i in f["input_ids"] if i not in special]
    return sum(i == unk for i in ids) / len(ids) if ids else 0.0


def collate_rows(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Setup.collate for a classifier: ids and mask padded (on the right) to the batch's longest row, one class
    index per row."""
    from tuneforge.data.encode import pad_right

    return {"input_ids": pad_right([e["input_ids"] for e in examples], pad_id),
            "attention_mask": pad_right([e["attention_mask"] for e in examples], 0),
            "labels": torch.tensor([e["labels"] for e in examples])}


def count_rows(batch: dict) -> int:
    """Setup.count_targets for a classifier: the loss is a mean over rows."""
    return int(batch["labels"].shape[0])


# -- model ------------------------------------------------------------------------------------------------


class ClassificationLoss(nn.Module):
    """(summed cross-entropy over the batch's rows, rows): what fit expects of a loss module.

    train.share_prefix is not used: an encoder attends both ways, so no prefix of a row can run once and be
    shared; every row runs whole."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels):
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        return F.cross_entropy(logits, labels, reduction="sum"), labels.shape[0]


def attach_lora(model, lora: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model

    head = [n for n in ("classifier", "score") if hasattr(model, n)]
    peft_cfg = PeftLoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_rslora=lora.use_rslora,
        use_dora=lora.use_dora,
        modules_to_save=head,  # the fresh head must train in full and be saved with the adapter
    )
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as e:
        raise UserError(f"lora.target_modules: {e}") from e


def predict(model, tok, features: list[dict], *, batch_size: int, bf16: bool, desc: str = "scoring") -> list[int]:
    model.eval()
    device = next(model.parameters()).device
    preds: list[int] = [0] * len(features)
    # Scoring in length order wastes almost no padding; predictions go back to their rows by index.
    by_length = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    bar = tqdm(total=len(features), desc=desc, unit="row", leave=False)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(by_length), batch_size):
            chunk = by_length[start:start + batch_size]
            batch = collate_rows([features[i] for i in chunk], tok.pad_token_id)
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
            for i, p in zip(chunk, logits.argmax(-1).tolist(), strict=True):
                preds[i] = p
            bar.update(len(chunk))
    bar.close()
    return preds


def dev_scorer(dev_rows: list[dict], dev_feats: list[dict], *, batch_size: int, bf16: bool):
    """Setup.score_dev for a classifier: argmax of the head on each dev row, scored by the task's metrics."""

    def score(s: Setup, desc: str) -> tuple[dict, list[dict]]:
        labels = s.task.labels
        preds = predict(s.model, s.tok, dev_feats, batch_size=batch_size, bf16=bf16, desc=desc)
        rows = [{"_line": r.get("_line"), "text": r["text"], "label": labels[r["label"]], "prediction": labels[p]}
                for r, p in zip(dev_rows, preds, strict=True)]
        return s.task.score(preds, [r["label"] for r in dev_rows]), rows

    return score


# -- the recipe -------------------------------------------------------------------------------------------


def max_length(cfg: ClassifierConfig, tok) -> int:
    return min(cfg.train.max_seq_len, tok.model_max_length or cfg.train.max_seq_len)


def setup_classifier(cfg: ClassifierConfig) -> Setup:
    from accelerate.utils import set_seed

    from tuneforge.models import load_model

    checkpoint_to_resume(cfg)  # a wrong train.resume fails before minutes of reading and loading
    if cfg.train.share_prefix and "share_prefix" in cfg.train.model_fields_set:
        print("note: train.share_prefix does not apply to a classifier head (an encoder runs every row whole)")
    task = build_task(cfg)
    train_rows = load_split(task, cfg.data.train, "train")
    dev_rows = load_split(task, cfg.data.dev, "dev")[: cfg.eval.limit]
    bf16 = use_bf16(cfg.train.bf16, "cuda" if torch.cuda.is_available() else "cpu")
    accelerator = make_accelerator(bf16)
    set_seed(cfg.train.seed)  # the fresh head's initial weights, dropout, LoRA init
    # fp32 master weights; accelerate's bf16 autocast does the matmuls where the hardware supports it
    model, tok = load_model(cfg.model, dtype="float32", kind="classifier", num_labels=len(task.labels),
                            device=str(accelerator.device))
    model.config.id2label = dict(enumerate(task.labels))
    model.config.label2id = {name: i for i, name in enumerate(task.labels)}
    if cfg.method == "lora":
        model = attach_lora(model, cfg.lora)
    model.train()

    max_len = max_length(cfg, tok)
    train_feats = encode_rows(tok, train_rows, max_len)
    dev_feats = encode_rows(tok, dev_rows, max_len)
    unknown = unknown_share(tok, train_feats)
    if unknown > 0.5:  # e.g. a tokenizer built without its vocabulary: every text looks the same, nothing is learnt
        accelerator.print(f"warning: {unknown:.0%} of the training tokens are the unknown token {tok.unk_token!r}; "
                          "the model cannot tell those words apart: check the tokenizer's vocabulary")
    run_dir = resolve_run_dir(cfg, accelerator)
    return assemble(cfg, task, accelerator, model, tok, ClassificationLoss(model), train_feats, dev_rows, run_dir,
                    collate=collate_rows, count_targets=count_rows,
                    # no generation: scoring is one forward pass, so bigger batches than eval.batch_size
                    score_dev=dev_scorer(dev_rows, dev_feats, batch_size=cfg.eval.batch_size * 4, bf16=bf16))


def finetune_classifier(cfg: ClassifierConfig) -> Path:
    s = setup_classifier(cfg)
    acc = s.accelerator
    trainable, total = announce(s, cfg.method)
    fresh = cfg.eval_before and acc.is_main_process and not cfg.train.resume
    before = scored_once(s.run_dir / "metrics_before.json", fresh, lambda: validate(s, desc="dev before"))
    before = before if cfg.eval_before else None

    stats = fit(s)
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return s.run_dir
    artifact = save_artifact(s, tokenizer=True)  # before the last scoring: a Ctrl-C there keeps the trained weights
    after = validate(s, desc="dev after")
    write_jsonl(s.run_dir / "predictions.jsonl", s.last_predictions)
    metrics = {
        "task": s.task.name,
        "method": cfg.method,
        "model": cfg.model,
        "primary_metric": s.task.primary_metric,
        "artifact": str(artifact),
        "labels": list(s.task.labels),
        "train_rows": len(s.examples),
        "dev_rows": len(s.dev_rows),
        "max_seq_len": max_length(cfg, s.tok),
        "bf16": acc.mixed_precision == "bf16",
        "before": before,
        "after": after,
        "train": {**stats, "trainable_params": trainable, "total_params": total},
    }
    write_run_report(s.run_dir, metrics, s.history)
    complete_run(s.run_dir, metrics)
    return s.run_dir


def wants_classifier(args) -> bool:
    """Route `tuneforge finetune` here when the recipe (or an override) says `head: classifier`."""
    from tuneforge.config import merge, parse_overrides, read_yaml, split_config_args

    path, overrides = split_config_args(args)
    data = merge(read_yaml(path) if path else {}, parse_overrides(overrides))
    return is_classifier_config(data)
