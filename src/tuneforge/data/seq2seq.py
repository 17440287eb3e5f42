"""Encoder-decoder (T5, BART, Marian) batching, loss and greedy generation.

A task's training conversation (prompt turns + one assistant answer) becomes a (source, target) pair: the
prompt goes to the encoder, the answer is the decoder's target. The model shifts the labels right itself
to build its decoder inputs, so a batch is just input_ids, attention_mask and labels (-100 on padding).

    pair = pair_from_conversation(task.conversation(row))        # (source, target)
    feats = [encode_pair(tok, s, t, max_source_len=512, max_target_len=128) for s, t in pairs]
    batch = collate_seq2seq(feats, tok.pad_token_id)             # tensors
    loss = seq2seq_loss(model, batch)                            # mean over target tokens
    texts = generate_seq2seq(model, tok, [prompt_to_source(task.prompt(r)) for r in rows], max_new_tokens=32)

finetune uses encode_row and Seq2SeqLoss (a summed loss, like the decoder-only TargetOnlyLoss); score_task
uses generate_seq2seq; both pick this path when the model's config says is_encoder_decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from tuneforge.data.encode import KEEP_EDGE, pad_right
from tuneforge.errors import UserError
from tuneforge.models.adapters import base_model

IGNORE_INDEX = -100


def is_encoder_decoder(model_or_config) -> bool:
    config = getattr(model_or_config, "config", model_or_config)
    return bool(getattr(config, "is_encoder_decoder", False))


def prompt_to_source(messages: Sequence[dict]) -> str:
    """Flatten prompt messages into one encoder input. One user turn stays as is; earlier turns (few-shot
    examples, a system prompt) come first, each on its own paragraph, answers marked 'Answer:'."""
    parts = []
    for m in messages:
        if m["role"] == "assistant":
            parts.append("Answer: " + m["content"])
        else:
            parts.append(m["content"])
    return "\n\n".join(p for p in parts if p)


def pair_from_conversation(messages: Sequence[dict]) -> tuple[str, str]:
    """A training conversation → (source, target): the last assistant turn is the target."""
    if not messages or messages[-1]["role"] != "assistant":
        raise UserError("an encoder-decoder model trains on conversations that end with an assistant turn")
    return prompt_to_source(messages[:-1]), messages[-1]["content"]


def check_task(task) -> None:
    """Refuse, before any loading, a task this path cannot score."""
    if getattr(task, "eval_mode", "generate") == "loss":
        raise UserError(f"task.name: '{task.name}' is scored by perplexity over every assistant turn of a chat, which "
                        "tuneforge computes for decoder-only models only; encoder-decoder models take sentiment, "
                        "translation, summarization and qa")


def encode_row(tok, task, row: dict, max_len: int) -> dict:
    """A task row's training pair as token ids: its prompt (flattened) for the encoder, its answer as labels.
    Source and target each get `max_len` tokens (train.max_seq_len)."""
    source, target = pair_from_conversation(task.conversation(row))
    return encode_pair(tok, source, target, max_source_len=max_len, max_target_len=max_len)


def encode_pair(tok, source: str, target: str, *, max_source_len: int, max_target_len: int) -> dict:
    """Token ids for one pair. A long source loses its middle: its start (the instruction) and its last
    KEEP_EDGE tokens (where a task prompt puts the text, and </s>) stay, as in the decoder-only encoding. The
    target keeps its own budget, so the answer is never cut to make room for the input; a long one loses
    its end. `truncated` / `target_truncated` report each cut."""
    src = tok(source, add_special_tokens=True)["input_ids"]
    tgt = tok(text_target=target, add_special_tokens=True)["input_ids"]
    truncated = len(src) > max_source_len
    target_truncated = len(tgt) > max_target_len
    if truncated:
        tail = min(KEEP_EDGE, max_source_len // 2)
        src = src[: max_source_len - tail] + src[len(src) - tail:]
    if target_truncated:
        tgt = tok(text_target=target, truncation=True, max_length=max_target_len)["input_ids"]
    return {"input_ids": src, "labels": tgt, "truncated": truncated, "target_truncated": target_truncated}


def collate_seq2seq(features: Sequence[dict], pad_id: int):
    """Right-pad sources with pad_id and targets with -100 (ignored by the loss); dynamic per batch."""

    if pad_id is None:
        raise UserError("the tokenizer has no pad token; set one (e.g. tok.pad_token = tok.eos_token)")
    return {"input_ids": pad_right([f["input_ids"] for f in features], pad_id),
            "attention_mask": pad_right([[1] * len(f["input_ids"]) for f in features], 0),
            "labels": pad_right([f["labels"] for f in features], IGNORE_INDEX)}


def seq2seq_loss(model, batch: dict):
    """Cross-entropy over the target tokens (labels != -100); the model builds decoder inputs from labels."""
    device = next(model.parameters()).device
    return model(**{k: v.to(device) for k, v in batch.items()}).loss


class Seq2SeqLoss(nn.Module):
    """Summed cross-entropy over target tokens and their count: the interface of finetune's decoder-only
    TargetOnlyLoss. A module wrapping the model, so accelerate's DDP wrapper sees its parameters."""

    share_prefix = False  # sharing a prompt prefix's KV cache across rows is a decoder-only shortcut

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels):
        lm = base_model(self.model)
        # what the model does itself with labels= (shifted right after the start token), but summed, not
        # averaged: finetune weights micro-batches by their target tokens
        decoder_input_ids = lm.prepare_decoder_input_ids_from_labels(labels=labels)
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            decoder_input_ids=decoder_input_ids, use_cache=False).logits
        keep = labels != IGNORE_INDEX
        return F.cross_entropy(logits[keep].float(), labels[keep], reduction="sum"), keep.sum()


def target_tokens(batch: dict) -> int:
    return int((batch["labels"] != IGNORE_INDEX).sum())


def generate_seq2seq(
    model,
    tok,
    sources: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    max_source_len: int | None = None,
    desc: str | None = None,
) -> list[str]:
    """Batched greedy decoding; encoder inputs are right-padded (the decoder starts fresh, so no left padding).
    Sources longer than the model's position table (BART, Marian), or `max_source_len`, lose their end."""
    import torch

    device = next(model.parameters()).device
    max_source_len = max_source_len or getattr(model.config, "max_position_embeddings", None)
    model.eval()
    out: list[str] = []
    bar = tqdm(total=len(sources), desc=desc or "generating", unit="row", leave=False)
    with torch.inference_mode():
        for i in range(0, len(sources), batch_size):
            chunk = list(sources[i : i + batch_size])
            enc = tok(chunk, return_tensors="pt", padding=True, padding_side="right",
                      truncation=max_source_len is not None, max_length=max_source_len)
            ids = model.generate(
                **{k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")},
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
            )
            out.extend(t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True))
            bar.update(len(chunk))
    bar.close()
    return out
