"""Prompting helpers shared by task packs: few-shot draws that fit the context, chain-of-thought wording,
and cutting long sources to a token budget."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from tuneforge.errors import UserError


def cot_suffix(what: str = "answer") -> str:
    """The chain-of-thought request; `final_answer` parses what it asks for."""
    return (
        "Think step by step in a few short sentences, then give the final answer on its own last line "
        f"as 'Answer: <{what}>'."
    )


_ANSWER = re.compile(r"answer\s*[:：]", re.IGNORECASE)


def final_answer(text: str) -> str:
    """The text after the last 'Answer:' (its first line); without one, the last non-empty line."""
    found = list(_ANSWER.finditer(text))
    if found:
        rest = text[found[-1].end():].strip()
        return rest.splitlines()[0].strip() if rest else ""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def first_line(text: str) -> str:
    """Small models often add a second paragraph of commentary; the answer is the first non-empty line."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


# -- tokens ---------------------------------------------------------------------------------------------------


def count_tokens(tok, messages: list[dict], generation_prompt: bool = True) -> int:
    ids = tok.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True)
    if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return len(ids)


def truncate_text(text: str, tok, max_tokens: int) -> tuple[str, bool]:
    """Keep the first `max_tokens` tokens of `text` (cut at a token boundary in the original string)."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= max_tokens:
        return text, False
    end = enc["offset_mapping"][max_tokens - 1][1] if max_tokens > 0 else 0
    return text[:end].rstrip(), True


def truncate_field(rows: list[dict], field: str, tok, max_tokens: int | None) -> list[dict]:
    """Cut `row[field]` to `max_tokens` tokens; every row gets `truncated` (bool). Targets are never touched."""
    if max_tokens is None:
        return [{**r, "truncated": False} for r in rows]
    out = []
    for r in rows:
        text, cut = truncate_text(r[field], tok, max_tokens)
        out.append({**r, field: text, "truncated": cut})
    return out


# -- few-shot ---------------------------------------------------------------------------------------------------


def labels_in_turn(rows: Sequence[dict], order: list[int]) -> list[int]:
    """For labelled rows, `order` re-arranged so the labels take turns (a, b, c, a, b, c, ...).

    Random draws from skewed or unlucky data can give shots of one label only, and a small model then copies
    that label for every input (SST-2, 4 random shots: every answer "negative", accuracy 0.49).
    """
    if not rows or not all(isinstance(r.get("label"), int) for r in rows):
        return order
    by_label: dict[int, list[int]] = {}
    for i in order:  # labels first seen first: the turn order is seeded too
        by_label.setdefault(rows[i]["label"], []).append(i)
    queues = list(by_label.values())
    return [q[j] for j in range(max(map(len, queues))) for q in queues if j < len(q)]


def check_enough_shots(train_rows: Sequence[dict], k: int) -> None:
    """Called before the model loads too: asking for more examples than there are rows is a config error."""
    if k > 0 and not train_rows:
        raise UserError("few_shot needs training rows to draw examples from; set data.train")
    if k > len(train_rows):
        raise UserError(f"eval.shots={k} but data.train has only {len(train_rows)} rows; "
                        "lower eval.shots or raise data.train.limit")


def draw_shots(
    train_rows: Sequence[dict],
    k: int,
    seed: int = 0,
    *,
    task=None,
    tok=None,
    max_len: int | None = None,
    eval_rows: Sequence[dict] = (),
    max_new_tokens: int = 0,
) -> list[dict]:
    """k training rows drawn with `seed`, the same for every evaluated row; labelled rows take turns by label.

    With `task`, `tok`, `max_len` and `eval_rows`, a drawn row is skipped when adding it would make the
    longest evaluated prompt plus `max_new_tokens` exceed `max_len` tokens; fewer than k come back when
    few fit (the caller reports how many).
    """
    if k <= 0:
        return []
    check_enough_shots(train_rows, k)
    order = list(range(len(train_rows)))
    random.Random(seed).shuffle(order)
    order = labels_in_turn(train_rows, order)
    if task is None or tok is None or max_len is None or not eval_rows:
        return [train_rows[i] for i in order[:k]]
    longest = max(eval_rows, key=lambda r: count_tokens(tok, task.prompt(r)))
    shots: list[dict] = []
    for i in order[: 20 * k]:  # a bounded search: every candidate may be too long
        candidate = [*shots, train_rows[i]]
        if count_tokens(tok, task.prompt(longest, "few_shot", candidate)) + max_new_tokens <= max_len:
            shots = candidate
            if len(shots) == k:
                break
    return shots
