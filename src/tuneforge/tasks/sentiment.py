"""Sentiment analysis: text → one label word. Metrics: accuracy, macro-F1, per-class P/R, confusion matrix."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from tuneforge.errors import UserError
from tuneforge.tasks.base import Message, TaskBase, user_turn, with_shots

COT_SUFFIX = "Think step by step in one or two sentences, then give the final answer on its own line as 'Answer: <label>'."


@dataclass
class SentimentTask(TaskBase):
    labels: list[str] = field(default_factory=lambda: ["negative", "positive"])
    instruction: str = "What is the sentiment of this text? Answer with one word: {choices}."
    system: str | None = None
    name: str = "sentiment"
    primary_metric: str = "accuracy"
    eval_mode: str = "generate"
    max_new_tokens: int = 8  # the model often answers "The sentiment of this text is positive."
    cot_max_new_tokens: int = 96
    strategies: tuple[str, ...] = ("zero_shot", "few_shot", "cot")

    def __post_init__(self):
        self.labels = [str(x).strip().lower() for x in self.labels]
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise UserError(f"task.labels must name at least two distinct labels, got {self.labels}")
        words = "|".join(re.escape(x) for x in sorted(self.labels, key=len, reverse=True))
        self._label_re = re.compile(rf"\b({words})\b")

    # -- data ---------------------------------------------------------------
    def prepare(self, rows: list[dict], source: str) -> list[dict]:
        out = []
        for i, row in enumerate(rows):
            where = f"{source}:{row.get('_line', i + 1)}"
            text = row.get("text")
            if text is None or not str(text).strip():
                raise UserError(f"{where}: empty text; set data.*.text_column to the column that holds the text")
            out.append({**row, "text": str(text).strip(), "label": self.label_index(row.get("label"), where)})
        return out

    def label_index(self, raw, where: str) -> int:
        value = str(raw).strip().lower() if raw is not None else ""
        if value.lstrip("-").isdigit() and 0 <= int(value) < len(self.labels):
            return int(value)
        if value in self.labels:
            return self.labels.index(value)
        raise UserError(
            f"{where}: label '{raw}' is neither an index below {len(self.labels)} nor one of {self.labels}; "
            "set task.labels to the data set's label names in index order"
        )

    # -- prompting ------------------------------------------------------------
    def _question(self, row: dict, strategy: str) -> str:
        choices = ", ".join(self.labels[:-1]) + " or " + self.labels[-1]
        q = self.instruction.format(choices=choices) + "\n\nText: " + row["text"]
        return q + ("\n\n" + COT_SUFFIX if strategy == "cot" else "")

    def prompt(self, row: dict, strategy: str = "zero_shot", shots: Sequence[dict] = ()) -> list[Message]:
        return with_shots(self, shots, self.system) + user_turn(self._question(row, strategy))

    def conversation(self, row: dict) -> list[Message]:
        return user_turn(self._question(row, "zero_shot"), self.system) + [
            {"role": "assistant", "content": self.labels[row["label"]]}
        ]

    def parse(self, text: str, strategy: str = "zero_shot") -> int | None:
        text = text.lower()
        if strategy == "cot" and "answer" in text:
            text = text[text.rfind("answer"):]
        found = self._label_re.search(text)
        return self.labels.index(found.group(1)) if found else None

    def reference(self, row: dict) -> int:
        return row["label"]

    # -- metrics --------------------------------------------------------------
    def score(self, predictions: Sequence[int | None], references: Sequence[int]) -> dict:
        return classification_metrics(predictions, references, self.labels)


def classification_metrics(predictions: Sequence[int | None], references: Sequence[int], labels: list[str]) -> dict:
    """Accuracy, macro-F1 and per-class P/R/F1; an unparseable prediction counts as wrong for every class."""
    n = len(references)
    k = len(labels)
    confusion = [[0] * (k + 1) for _ in range(k)]  # last column: unparseable
    for p, r in zip(predictions, references, strict=True):
        confusion[r][k if p is None else p] += 1
    per_class = {}
    f1s = []
    for c, name in enumerate(labels):
        tp = confusion[c][c]
        predicted = sum(confusion[r][c] for r in range(k))
        actual = sum(confusion[c])
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
        f1s.append(f1)
    correct = sum(confusion[c][c] for c in range(k))
    return {
        "accuracy": correct / n if n else 0.0,
        "macro_f1": sum(f1s) / k,
        "per_class": per_class,
        "confusion_matrix": {"labels": labels, "columns": labels + ["unparseable"], "rows": confusion},
        "unparseable": sum(row[k] for row in confusion),
        "n": n,
    }
