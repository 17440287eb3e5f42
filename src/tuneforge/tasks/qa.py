"""Extractive QA answered generatively: context + question → a short answer span.

Metrics: exact match and token F1 after the official SQuAD v1.1 normalisation (lower-case, drop ASCII
punctuation and the articles a/an/the, squeeze whitespace), max over the gold answers, × 100.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from tuneforge.data.formats import is_squad_article, squad_rows
from tuneforge.errors import UserError
from tuneforge.tasks.base import Message, TaskBase, user_turn, with_shots
from tuneforge.tasks.prompts import cot_suffix, final_answer, first_line, truncate_field

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PREFIX = re.compile(r"^\s*(?:the\s+)?answer(?:\s+is\b\s*[:：]?|\s*[:：])\s*", re.IGNORECASE)


@dataclass
class QATask(TaskBase):
    instruction: str = "Answer the question with a short phrase copied from the context."
    system: str | None = None
    max_source_tokens: int | None = 384  # contexts beyond this are cut from the end
    name: str = "qa"
    primary_metric: str = "f1"
    eval_mode: str = "generate"
    max_new_tokens: int = 24
    cot_max_new_tokens: int = 128
    strategies: tuple[str, ...] = ("zero_shot", "few_shot", "cot")

    # -- data ---------------------------------------------------------------
    def prepare(self, rows: list[dict], source: str) -> list[dict]:
        if rows and is_squad_article(rows[0]):
            rows = squad_rows(rows, source)
        out = []
        for i, r in enumerate(rows):
            where = f"{source}:{r.get('_line', i + 1)}"
            answers = r.get("answers")
            if isinstance(answers, str):
                answers = [answers]
            if not isinstance(answers, list) or not answers:
                raise UserError(f"{where}: needs 'answers' (a list of gold answer texts) besides context and question")
            for key in ("context", "question"):
                if not str(r.get(key) or "").strip():
                    raise UserError(f"{where}: empty '{key}'; map it with data.*.columns: {{{key}: your_column}}")
            out.append({**r, "answers": [a["text"] if isinstance(a, dict) else str(a) for a in answers]})
        return out

    def read(self, spec) -> list[dict]:
        """SQuAD JSON keeps its articles under 'data': there `start`/`limit` count articles, so splits never
        share a paragraph (SQuAD dev: train start 0 limit 38, dev start 38 limit 5, hold-out start 43)."""
        from tuneforge.data.readers import read_rows

        if spec.records_key is None and _json_object_file(spec.path):
            spec = spec.model_copy(update={"records_key": "data"})
        return read_rows(spec)

    def truncate(self, rows: list[dict], tok) -> list[dict]:
        return truncate_field(rows, "context", tok, self.max_source_tokens)

    # -- prompting ------------------------------------------------------------
    def _question(self, row: dict, strategy: str) -> str:
        text = f"{self.instruction}\n\nContext: {row['context']}\n\nQuestion: {row['question']}"
        return text + ("\n\n" + cot_suffix("short answer") if strategy == "cot" else "")

    def prompt(self, row: dict, strategy: str = "zero_shot", shots: Sequence[dict] = ()) -> list[Message]:
        return with_shots(self, shots, self.system) + user_turn(self._question(row, strategy))

    def conversation(self, row: dict) -> list[Message]:
        return user_turn(self._question(row, "zero_shot"), self.system) + [
            {"role": "assistant", "content": row["answers"][0]}
        ]

    def parse(self, text: str, strategy: str = "zero_shot") -> str | None:
        text = final_answer(text) if strategy == "cot" else first_line(text)
        text = _PREFIX.sub("", text, count=1).strip().rstrip(".").strip('"“”')
        return text or None

    def reference(self, row: dict) -> list[str]:
        return row["answers"]

    # -- metrics --------------------------------------------------------------
    def score(self, predictions: Sequence[str | None], references: Sequence[list[str]]) -> dict:
        return squad_metrics(predictions, references)


def _json_object_file(path: str) -> bool:
    """True for a .json file whose top level is an object (SQuAD layout) rather than a list of rows."""
    if not str(path).lower().endswith(".json"):
        return False
    try:
        with open(path, encoding="utf-8-sig") as f:
            head = f.read(64).lstrip()
    except OSError:
        return False  # read_rows reports the missing file
    return head.startswith("{")


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: Sequence[str | None], references: Sequence[list[str]]) -> dict:
    em = f1 = 0.0
    for pred, golds in zip(predictions, references, strict=True):
        pred = pred or ""
        em += max(exact_match(pred, g) for g in golds)
        f1 += max(token_f1(pred, g) for g in golds)
    n = len(references)
    return {
        "exact_match": 100 * em / n if n else 0.0,
        "f1": 100 * f1 / n if n else 0.0,
        "unparseable": sum(p is None for p in predictions),
        "n": n,
    }
