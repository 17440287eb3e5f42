"""The task-pack protocol: how a data row becomes chat messages, a target, a prediction and metrics.

Each task (sentiment, translation, summarization, qa, chat) is one module implementing `Task`, as a dataclass
that inherits `TaskBase`: the optional members (reading its own files, cutting long sources, a CoT budget, loss
scoring) have their defaults there, so callers use every member plainly. Shared behaviour otherwise lives in
plain functions (tuneforge.data.encode, tuneforge.tasks.prompts): a task pack reads top to bottom.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}

# Primary metrics where a fall is the improvement; every other one (accuracy, BLEU, ROUGE, F1) should rise.
LOWER_IS_BETTER = frozenset({"loss", "perplexity"})
Strategy = Literal["zero_shot", "few_shot", "cot"]


@runtime_checkable
class Task(Protocol):
    name: str
    primary_metric: str          # the number the reports lead with, e.g. "accuracy", "bleu", "rougeL"
    eval_mode: Literal["generate", "loss"]   # chat is scored by held-out loss/perplexity
    max_new_tokens: int          # generation budget for one answer (zero-shot / few-shot)
    cot_max_new_tokens: int | None   # budget for strategy cot; None: max_new_tokens
    max_source_tokens: int | None    # `truncate` cuts sources to this many tokens; None: never
    questions: str | None        # eval_mode loss: a question set answered for reading (chat: MT-Bench)
    strategies: tuple[str, ...]  # prompting strategies this task supports

    def read(self, spec) -> list[dict]:
        """The raw rows of a data split (`spec`: config.data.DataSpec), before `prepare`."""

    def prepare(self, rows: list[dict], source: str) -> list[dict]:
        """Check and normalise rows read from `source` (a path, for error messages); raise UserError on bad rows."""

    def truncate(self, rows: list[dict], tok) -> list[dict]:
        """Rows with over-long sources cut to `max_source_tokens` (targets untouched), each marked `truncated`."""

    def prompt(self, row: dict, strategy: Strategy = "zero_shot", shots: Sequence[dict] = ()) -> list[Message]:
        """The messages a model sees before it answers (ends with a user turn)."""

    def conversation(self, row: dict) -> list[Message]:
        """The training conversation: prompt messages plus assistant turns, which are the loss targets."""

    def parse(self, text: str, strategy: Strategy = "zero_shot") -> Any:
        """Generated text → prediction; None when nothing usable is found."""

    def reference(self, row: dict) -> Any:
        """The gold answer(s) of a row, in the form `score` expects."""

    def score(self, predictions: Sequence[Any], references: Sequence[Any]) -> dict[str, Any]:
        """Metrics from the canonical implementation; must include `primary_metric`."""

    def loss_metrics(self, model, tok, rows: list[dict], batch_size: int = 8) -> tuple[dict, list[dict]]:
        """eval_mode loss: (metrics, per-row predictions) from the model's loss on `rows`."""


class TaskBase:
    """Defaults for Task's optional members; a pack's dataclass fields and methods override them. Plain class
    attributes (not dataclass fields), so they add no task.* options and leave each pack's field order alone."""

    eval_mode = "generate"
    cot_max_new_tokens: int | None = None
    max_source_tokens: int | None = None
    questions: str | None = None

    def read(self, spec) -> list[dict]:
        from tuneforge.data.readers import read_rows

        return read_rows(spec)

    def truncate(self, rows: list[dict], tok) -> list[dict]:
        return rows  # no source long enough to cut

    def loss_metrics(self, model, tok, rows: list[dict], batch_size: int = 8) -> tuple[dict, list[dict]]:
        raise NotImplementedError(f"task '{self.name}' is scored by generation (eval_mode generate), not by loss")


def user_turn(content: str, system: str | None = None) -> list[Message]:
    msgs: list[Message] = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": content})
    return msgs


def with_shots(task: Task, shots: Sequence[dict], system: str | None = None) -> list[Message]:
    """Few-shot examples as earlier user/assistant turns (the model sees them as its own past answers)."""
    msgs: list[Message] = [{"role": "system", "content": system}] if system else []
    for shot in shots:
        conv = task.conversation(shot)
        msgs.extend(m for m in conv if m["role"] != "system")
    return msgs
