"""The task-pack protocol: how a data row becomes chat messages, a target, a prediction and metrics.

Each task (sentiment, translation, summarization, qa, chat) is one module implementing `Task`.
Shared behaviour lives in plain functions (tuneforge.data.encode, tuneforge.tasks.prompts), not in a
base class: a task pack is a handful of methods you can read top to bottom.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}
Strategy = Literal["zero_shot", "few_shot", "cot"]


@runtime_checkable
class Task(Protocol):
    name: str
    primary_metric: str          # the number the reports lead with, e.g. "accuracy", "bleu", "rougeL"
    eval_mode: Literal["generate", "loss"]   # chat is scored by held-out loss/perplexity
    max_new_tokens: int          # generation budget for one answer (zero-shot / few-shot)
    strategies: tuple[str, ...]  # prompting strategies this task supports

    def prepare(self, rows: list[dict], source: str) -> list[dict]:
        """Check and normalise rows read from `source` (a path, for error messages); raise UserError on bad rows."""

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
