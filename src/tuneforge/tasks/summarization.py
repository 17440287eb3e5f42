"""Summarization: a dialogue or article → a short summary. Metrics: ROUGE-1/2/L/Lsum F1 (rouge-score).

Scoring against several references takes, per example, the best-matching reference (rouge-score's
`score_multi`, as Hugging Face `evaluate` does): any of the references is a correct summary, so the
prediction is judged against the one it is closest to. The mean over references is reported too.

rouge-score's default tokenizer keeps only [a-z0-9], which erases Vietnamese letters with diacritics;
`UnicodeWordTokenizer` keeps every Unicode letter and digit (after NFC normalisation and lower-casing).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from tuneforge.data.formats import summary_row
from tuneforge.tasks.base import Message, TaskBase, user_turn, with_shots
from tuneforge.tasks.prompts import truncate_field

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_WORD = re.compile(r"[^\W_]+")  # letters and digits of any script; '_' splits (VietNews word segmentation)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_PREFIX = re.compile(r"^\s*(?:here is a summary[^:\n]*:|summary\s*:|tóm tắt\s*:)\s*", re.IGNORECASE)


class UnicodeWordTokenizer:
    """rouge-score tokenizer for any language: NFC, lower-case, runs of Unicode letters/digits."""

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(unicodedata.normalize("NFC", text).lower())


@dataclass
class SummarizationTask(TaskBase):
    instruction: str = "Summarize the following {kind} in one or two sentences."
    system: str | None = None
    max_source_tokens: int | None = 512  # dialogues/articles beyond this are cut from the end
    desegment: bool | None = None  # join VietNews '_'-segmented words; None: only for VietNews rows
    name: str = "summarization"
    primary_metric: str = "rougeL"
    eval_mode: str = "generate"
    max_new_tokens: int = 96
    strategies: tuple[str, ...] = ("zero_shot", "few_shot")

    # -- data ---------------------------------------------------------------
    def prepare(self, rows: list[dict], source: str) -> list[dict]:
        return [summary_row(r, f"{source}:{r.get('_line', i + 1)}", self.desegment) for i, r in enumerate(rows)]

    def truncate(self, rows: list[dict], tok) -> list[dict]:
        return truncate_field(rows, "source", tok, self.max_source_tokens)

    # -- prompting ------------------------------------------------------------
    def _question(self, row: dict) -> str:
        return self.instruction.format(kind=row.get("kind", "text")) + "\n\n" + row["source"]

    def prompt(self, row: dict, strategy: str = "zero_shot", shots: Sequence[dict] = ()) -> list[Message]:
        return with_shots(self, shots, self.system) + user_turn(self._question(row))

    def conversation(self, row: dict) -> list[Message]:
        # Train on the first reference: DialogSum train rows have one, test rows three.
        return user_turn(self._question(row), self.system) + [
            {"role": "assistant", "content": row["references"][0]}
        ]

    def parse(self, text: str, strategy: str = "zero_shot") -> str | None:
        text = " ".join(_PREFIX.sub("", text.strip(), count=1).split())
        return text or None

    def reference(self, row: dict) -> list[str]:
        return row["references"]

    # -- metrics --------------------------------------------------------------
    def score(self, predictions: Sequence[str | None], references: Sequence[list[str]]) -> dict:
        return rouge_metrics(predictions, references)


def _sentences(text: str) -> str:
    # rougeLsum treats newlines as sentence boundaries.
    return "\n".join(s for s in _SENTENCE_END.split(text.strip()) if s)


def rouge_metrics(predictions: Sequence[str | None], references: Sequence[str | list[str]]) -> dict:
    """ROUGE F1 × 100, best reference per example (as rouge-score's `score_multi`), plus the mean over references."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(list(ROUGE_TYPES), tokenizer=UnicodeWordTokenizer())
    best = {t: 0.0 for t in ROUGE_TYPES}
    mean = {t: 0.0 for t in ROUGE_TYPES}
    for pred, refs in zip(predictions, references, strict=True):
        refs = [refs] if isinstance(refs, str) else list(refs)
        hyp = _sentences(pred or "")
        targets = [_sentences(r) for r in refs]
        per_ref = [scorer.score(target, hyp) for target in targets]  # what score_multi does, keeping all
        for t in ROUGE_TYPES:
            values = [s[t].fmeasure for s in per_ref]
            best[t] += max(values)
            mean[t] += sum(values) / len(values)
    n = len(predictions)
    out = {t: 100 * best[t] / n if n else 0.0 for t in ROUGE_TYPES}
    out |= {f"{t}_mean_ref": 100 * mean[t] / n if n else 0.0 for t in ROUGE_TYPES}
    out |= {"reference_aggregation": "max", "tokenizer": "unicode-words (NFC, lower-case, no stemming)",
            "unparseable": sum(p is None for p in predictions), "n": n}
    return out
