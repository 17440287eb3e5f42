"""Fine-tune an encoder (BERT-like) with a sequence-classification head: full or LoRA.

The transfer-learning arm beside the decoder LoRA: instead of generating a label word, a small linear head
on the encoder's [CLS] vector picks the label. `finetune_classifier(cfg)` reads the rows, scores the dev split
before and after training, and writes a run folder:

    runs/<name>/config.yaml, metrics.json, metrics.jsonl, predictions.jsonl, model/ (full) or adapter/ (lora)

metrics.json = {task, method, model, labels, before, after, train: {tokens, seconds, tokens_per_second,
trainable_params, total_params, steps}}.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from tqdm import tqdm

from tuneforge.config import LoraConfig, RunConfig, TrainConfig, to_yaml
from tuneforge.errors import UserError
from tuneforge.fileio import atomic_dir, write_json, write_jsonl, write_text
from tuneforge.report.run_report import write_run_report

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


def load_split(spec, task) -> list[dict]:
    from tuneforge.data.readers import read_rows

    return task.prepare(read_rows(spec), spec.path)


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


def batches(features: list[dict], batch_size: int, tok, *, shuffle_seed: int | None = None):
    """Dynamic padding: each batch is padded only to its own longest row. With a seed, rows are shuffled,
    then sorted by length inside windows of 50 batches (far less padding, still a random order of batches)."""
    order = list(range(len(features)))
    if shuffle_seed is not None:
        rng = random.Random(shuffle_seed)
        rng.shuffle(order)
        window = 50 * batch_size
        order = [j for i in range(0, len(order), window)
                 for j in sorted(order[i : i + window], key=lambda k: len(features[k]["input_ids"]))]
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        rng.shuffle(chunks)
    else:
        chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for chunk in chunks:
        yield chunk, tok.pad([features[j] for j in chunk], return_tensors="pt")


# -- model ------------------------------------------------------------------------------------------------


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


def count_params(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def use_bf16(setting: str, device: str) -> bool:
    import torch

    from tuneforge.models.dtypes import cpu_has_bf16

    if setting != "auto":
        return setting == "true"
    return torch.cuda.is_bf16_supported() if device.startswith("cuda") else cpu_has_bf16()


def predict(model, tok, features: list[dict], *, batch_size: int, bf16: bool, desc: str = "scoring") -> list[int]:
    import torch

    model.eval()
    device = next(model.parameters()).device
    preds: list[int] = [0] * len(features)
    # Scoring in length order wastes almost no padding; predictions go back to their rows by index.
    by_length = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    ordered = [features[i] for i in by_length]
    bar = tqdm(total=len(features), desc=desc, unit="row", leave=False)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for chunk, batch in batches(ordered, batch_size, tok):
            batch.pop("labels", None)
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            for j, p in zip(chunk, logits.argmax(-1).tolist(), strict=True):
                preds[by_length[j]] = p
            bar.update(len(chunk))
    bar.close()
    return preds


def train_classifier(model, tok, train_feats: list[dict], train: TrainConfig, *, log=None) -> dict:
    """The loop in plain sight: forward, loss, backward, clip, step. Returns tokens/seconds/steps."""
    import torch
    from transformers import get_scheduler

    device = next(model.parameters()).device
    bf16 = use_bf16(train.bf16, device.type)
    steps_per_epoch = math.ceil(len(train_feats) / (train.batch_size * train.grad_accum))
    total_steps = train.max_steps or max(1, math.ceil(steps_per_epoch * train.epochs))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    scheduler = get_scheduler(
        "constant_with_warmup" if train.schedule == "constant" else train.schedule,
        optimizer,
        num_warmup_steps=int(train.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    model.train()
    step, tokens, micro, epoch, running = 0, 0, 0, 0, []
    bar = tqdm(total=total_steps, desc="training", unit="step")
    start = time.perf_counter()
    while step < total_steps:
        for _, batch in batches(train_feats, train.batch_size, tok, shuffle_seed=train.seed + epoch):
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model(**batch).loss
            (loss / train.grad_accum).backward()
            tokens += int(batch["attention_mask"].sum())
            running.append(loss.item())
            micro += 1
            if micro % train.grad_accum:
                continue
            if train.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            mean_loss = sum(running) / len(running)
            bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
            bar.update()
            if log is not None and (step % train.log_every == 0 or step == total_steps):
                log({"step": step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0], "tokens": tokens})
            running = []
            if step >= total_steps:
                break
        epoch += 1
    bar.close()
    seconds = time.perf_counter() - start
    model.eval()
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds if seconds else 0.0, "steps": step}


# -- the recipe -------------------------------------------------------------------------------------------


def finetune_classifier(cfg: ClassifierConfig) -> Path:
    import torch
    import transformers

    from tuneforge.models import load_model
    from tuneforge.tasks import get_task
    from tuneforge.tasks.sentiment import classification_metrics

    task = get_task(cfg.task.name, **cfg.task.options())
    labels = list(task.labels)
    train_rows = load_split(cfg.data.train, task)
    dev_rows = load_split(cfg.data.dev, task)

    torch.manual_seed(cfg.train.seed)
    transformers.set_seed(cfg.train.seed)
    # Train in fp32 master weights; bf16 autocast does the matmuls where the hardware supports it.
    model, tok = load_model(cfg.model, dtype="float32", kind="classifier", num_labels=len(labels))
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {name: i for i, name in enumerate(labels)}
    if cfg.method == "lora":
        model = attach_lora(model, cfg.lora)
    trainable, total = count_params(model)

    max_len = min(cfg.train.max_seq_len, tok.model_max_length or cfg.train.max_seq_len)
    train_feats = encode_rows(tok, train_rows, max_len)
    dev_feats = encode_rows(tok, dev_rows, max_len)
    unknown = unknown_share(tok, train_feats)
    if unknown > 0.5:  # e.g. a tokenizer built without its vocabulary: every text looks the same, nothing is learnt
        print(f"warning: {unknown:.0%} of the training tokens are the unknown token {tok.unk_token!r}; "
              "the model cannot tell those words apart: check the tokenizer's vocabulary")
    refs = [r["label"] for r in dev_rows]
    bf16 = use_bf16(cfg.train.bf16, next(model.parameters()).device.type)
    eval_bs = cfg.eval.batch_size * 4  # no generation: scoring is one forward pass

    before = None
    if cfg.eval_before:
        before = classification_metrics(predict(model, tok, dev_feats, batch_size=eval_bs, bf16=bf16, desc="dev before"), refs, labels)

    logged: list[dict] = []
    stats = train_classifier(model, tok, train_feats, cfg.train, log=logged.append)
    preds = predict(model, tok, dev_feats, batch_size=eval_bs, bf16=bf16, desc="dev after")
    after = classification_metrics(preds, refs, labels)

    target = Path(cfg.output_dir) / cfg.name
    saved = "adapter" if cfg.method == "lora" else "model"
    metrics = {
        "task": task.name,
        "method": cfg.method,
        "model": cfg.model,
        "primary_metric": task.primary_metric,
        "artifact": str(target / saved),
        "labels": labels,
        "train_rows": len(train_rows),
        "dev_rows": len(dev_rows),
        "max_seq_len": max_len,
        "bf16": bf16,
        "before": before,
        "after": after,
        "train": {**stats, "trainable_params": trainable, "total_params": total},
    }
    with atomic_dir(target) as tmp:
        write_text(tmp / "config.yaml", to_yaml(cfg))
        write_jsonl(tmp / "metrics.jsonl", logged)
        write_jsonl(
            tmp / "predictions.jsonl",
            ({"_line": r.get("_line"), "text": r["text"], "label": labels[r["label"]], "prediction": labels[p]}
             for r, p in zip(dev_rows, preds, strict=True)),
        )
        write_json(tmp / "metrics.json", metrics)
        write_run_report(tmp, metrics, logged, name=cfg.name)
        model.save_pretrained(tmp / saved)
        tok.save_pretrained(tmp / saved)
    return target



def wants_classifier(args) -> bool:
    """Route `tuneforge finetune` here when the recipe (or an override) says `head: classifier`."""
    from tuneforge.config import merge, parse_overrides, read_yaml, split_config_args

    path, overrides = split_config_args(args)
    data = merge(read_yaml(path) if path else {}, parse_overrides(overrides))
    return is_classifier_config(data)
