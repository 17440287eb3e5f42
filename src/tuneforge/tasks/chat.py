"""Chat: multi-turn conversations, scored by held-out loss and perplexity on the assistant tokens only.

Rows in Alpaca (+ LIMA `history`), ShareGPT or OpenAI `messages` layout become `messages`; the chat
template renders them and `encode_conversation` masks everything except assistant turns. Generated
answers to a fixed question set (MT-Bench turn 1) are saved for reading, not scored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tuneforge.data.formats import chat_messages
from tuneforge.tasks.base import Message, TaskBase


@dataclass
class ChatTask(TaskBase):
    system: str | None = None  # added to conversations that have no system message of their own
    max_len: int = 1024  # tokens per conversation when scoring loss; longer ones are cut (and counted)
    questions: str | None = "../shared/data/chat/mt_bench/question.jsonl"  # answered for reading
    name: str = "chat"
    primary_metric: str = "perplexity"
    eval_mode: str = "loss"
    max_new_tokens: int = 256
    strategies: tuple[str, ...] = ("zero_shot",)

    # -- data ---------------------------------------------------------------
    def prepare(self, rows: list[dict], source: str) -> list[dict]:
        out = []
        for i, r in enumerate(rows):
            msgs = chat_messages(r, f"{source}:{r.get('_line', i + 1)}")
            if self.system and msgs[0]["role"] != "system":
                msgs = [{"role": "system", "content": self.system}, *msgs]
            out.append({**r, "messages": msgs})
        return out

    def read(self, spec) -> list[dict]:
        """One file, or a mix: `path` a folder and `files` {name: file inside it} (e.g. Alpaca + LIMA).

        A mix is read file by file, shuffled with `seed`, and then `start`/`limit` count rows of that
        shuffled mix, so dev {limit: 50} and train {start: 50} with the same seed hold different rows.
        """
        from tuneforge.data.formats import read_chat_mix
        from tuneforge.data.readers import read_rows

        if not spec.files:
            return read_rows(spec)
        return read_chat_mix(spec)

    # -- prompting ------------------------------------------------------------
    def prompt(self, row: dict, strategy: str = "zero_shot", shots: Sequence[dict] = ()) -> list[Message]:
        """Everything before the last assistant turn."""
        return list(row["messages"][:-1])

    def conversation(self, row: dict) -> list[Message]:
        return list(row["messages"])

    def parse(self, text: str, strategy: str = "zero_shot") -> str | None:
        return text.strip() or None

    def reference(self, row: dict) -> str:
        return row["messages"][-1]["content"]

    # -- metrics --------------------------------------------------------------
    def loss_metrics(self, model, tok, rows: list[dict], batch_size: int = 8) -> tuple[dict, list[dict]]:
        """(metrics, per-conversation predictions) for evaluate/prompt-eval, which call it for eval_mode loss."""
        losses = conversation_losses(model, tok, [r["messages"] for r in rows], batch_size, self.max_len)
        preds = [{"_line": r.get("_line"), "_source": r.get("_source"), **x,
                  "loss": x["nll"] / x["tokens"] if x["tokens"] else None} for r, x in zip(rows, losses, strict=True)]
        return self.score(losses), preds

    def score(self, predictions: Sequence[dict], references: Sequence = ()) -> dict:
        """`predictions`: per-conversation {nll, tokens, truncated} from `conversation_losses`."""
        nll = sum(p["nll"] for p in predictions)
        tokens = sum(p["tokens"] for p in predictions)
        loss = nll / tokens if tokens else float("nan")
        return {
            "loss": loss,
            "perplexity": math.exp(loss) if tokens else float("nan"),
            "assistant_tokens": tokens,
            "truncated": sum(bool(p.get("truncated")) for p in predictions),
            "n": len(predictions),
        }


def conversation_losses(model, tok, conversations: Sequence[list[Message]], batch_size: int = 8,
                        max_len: int = 1024, desc: str = "chat loss") -> list[dict]:
    """Summed negative log-likelihood and count of the assistant tokens of each conversation."""
    import torch
    from tqdm.auto import tqdm

    from tuneforge.data.encode import IGNORE, collate, encode_conversation

    encoded = [encode_conversation(tok, msgs, max_len) for msgs in conversations]
    device = next(model.parameters()).device
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = []
    model.eval()
    for start in tqdm(range(0, len(encoded), batch_size), desc=desc, unit="batch"):
        batch = encoded[start:start + batch_size]
        tensors = collate(batch, pad)
        with torch.no_grad():
            logits = model(input_ids=tensors["input_ids"].to(device),
                           attention_mask=tensors["attention_mask"].to(device)).logits.float()
        # Token t is predicted from position t-1.
        targets = tensors["labels"][:, 1:].to(device)
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE, reduction="none"
        )
        counted = (targets != IGNORE)
        for i, e in enumerate(batch):
            out.append({"nll": float(nll[i][counted[i]].sum()), "tokens": int(counted[i].sum()),
                        "truncated": bool(e["truncated"])})
    return out


def chat_loss(model, tok, conversations: Sequence[list[Message]], batch_size: int = 8, max_len: int = 1024) -> dict:
    """Held-out loss (mean NLL per assistant token) and perplexity = exp(loss)."""
    return ChatTask().score(conversation_losses(model, tok, conversations, batch_size, max_len))


def answer_questions(model, tok, task: ChatTask, *, batch_size: int = 8, max_new_tokens: int | None = None,
                     limit: int | None = None) -> list[dict]:
    """Greedy answers to the task's question set (MT-Bench turn 1), for reading: {question_id, category, question, answer}."""
    from tuneforge.data.formats import read_mt_bench
    from tuneforge.generation import generate

    if not task.questions:
        return []
    rows = read_mt_bench(task.questions)[:limit]
    convs = []
    for r in rows:
        system = [{"role": "system", "content": task.system}] if task.system else []
        convs.append(system + r["messages"])
    answers = generate(model, tok, convs, max_new_tokens=max_new_tokens or task.max_new_tokens,
                       batch_size=batch_size, desc="MT-Bench turn 1")
    return [{"question_id": r["question_id"], "category": r["category"], "question": r["messages"][0]["content"],
             "answer": a} for r, a in zip(rows, answers, strict=True)]
