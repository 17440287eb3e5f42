"""Translation: a source sentence → its translation. Metrics: sacreBLEU (13a) and chrF, with signatures."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from tuneforge.data.formats import parallel_row, parse_direction
from tuneforge.tasks.base import Message, TaskBase, user_turn, with_shots
from tuneforge.tasks.prompts import first_line, truncate_field

LANGUAGES = {
    "en": "English", "vi": "Vietnamese", "fr": "French", "de": "German", "es": "Spanish", "zh": "Chinese",
    "ja": "Japanese", "ko": "Korean", "cs": "Czech", "ru": "Russian", "it": "Italian", "pt": "Portuguese",
}

# Chatty openers a small model puts before the translation ("Translation: ...", "Here is the translation:").
_PREFIX = re.compile(r"^\s*(?:here is the translation[^:\n]*:|translation[^:\n]{0,20}:|[a-z]+ translation:)\s*",
                     re.IGNORECASE)


@dataclass
class TranslationTask(TaskBase):
    direction: str = "en-vi"
    instruction: str = "Translate the following {source} text into {target}. Reply with the translation only."
    system: str | None = None
    max_source_tokens: int | None = None  # sentences are short; set for documents
    name: str = "translation"
    primary_metric: str = "bleu"
    eval_mode: str = "generate"
    max_new_tokens: int = 128
    strategies: tuple[str, ...] = ("zero_shot", "few_shot")

    def __post_init__(self):
        self.source_lang, self.target_lang = parse_direction(self.direction)

    def language_name(self, code: str) -> str:
        return LANGUAGES.get(code, code)

    # -- data ---------------------------------------------------------------
    def prepare(self, rows: list[dict], source: str) -> list[dict]:
        return [
            parallel_row(r, self.source_lang, self.target_lang, f"{source}:{r.get('_line', i + 1)}")
            for i, r in enumerate(rows)
        ]

    def truncate(self, rows: list[dict], tok) -> list[dict]:
        return truncate_field(rows, "source", tok, self.max_source_tokens)

    # -- prompting ------------------------------------------------------------
    def _question(self, row: dict) -> str:
        head = self.instruction.format(source=self.language_name(self.source_lang),
                                       target=self.language_name(self.target_lang))
        return f"{head}\n\n{row['source']}"

    def prompt(self, row: dict, strategy: str = "zero_shot", shots: Sequence[dict] = ()) -> list[Message]:
        return with_shots(self, shots, self.system) + user_turn(self._question(row))

    def conversation(self, row: dict) -> list[Message]:
        return user_turn(self._question(row), self.system) + [{"role": "assistant", "content": row["target"]}]

    def parse(self, text: str, strategy: str = "zero_shot") -> str | None:
        text = first_line(_PREFIX.sub("", text.strip(), count=1))
        text = text.strip().strip('"“”').strip()
        return text or None

    def reference(self, row: dict) -> str:
        return row["target"]

    # -- metrics --------------------------------------------------------------
    def score(self, predictions: Sequence[str | None], references: Sequence[str | list[str]]) -> dict:
        return translation_metrics(predictions, references)


def translation_metrics(predictions: Sequence[str | None], references: Sequence[str | list[str]]) -> dict:
    """Corpus BLEU (sacreBLEU defaults: 13a tokenisation, exp smoothing) and chrF; 0-100 with signatures.

    A reference may be a list (several references per sentence); unparseable predictions count as empty.
    """
    from sacrebleu.metrics import BLEU, CHRF

    hyps = [p or "" for p in predictions]
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    n_refs = max(len(r) for r in refs) if refs else 1
    # sacrebleu wants one stream per reference position; pad missing ones with None (allowed by sacrebleu).
    streams = [[r[j] if j < len(r) else None for r in refs] for j in range(n_refs)]
    bleu, chrf = BLEU(), CHRF()
    b = bleu.corpus_score(hyps, streams)
    c = chrf.corpus_score(hyps, streams)
    return {
        "bleu": b.score,
        "chrf": c.score,
        "bleu_precisions": b.precisions,
        "bleu_brevity_penalty": b.bp,
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "unparseable": sum(p is None for p in predictions),
        "n": len(hyps),
    }
