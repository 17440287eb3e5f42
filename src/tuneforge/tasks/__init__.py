"""Task packs. `get_task(name, **options)` returns one; every pack implements `tuneforge.tasks.base.Task`."""

from __future__ import annotations

import importlib

from tuneforge.errors import UserError

# name -> (module, class); modules are imported only when used.
TASKS = {
    "sentiment": ("tuneforge.tasks.sentiment", "SentimentTask"),
    "translation": ("tuneforge.tasks.translation", "TranslationTask"),
    "summarization": ("tuneforge.tasks.summarization", "SummarizationTask"),
    "qa": ("tuneforge.tasks.qa", "QATask"),
    "chat": ("tuneforge.tasks.chat", "ChatTask"),
}


def get_task(name: str, **options):
    if name not in TASKS:
        raise UserError(f"task.name '{name}' is unknown; choose one of {', '.join(TASKS)}")
    module, cls = TASKS[name]
    try:
        task_cls = getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as e:
        raise UserError(f"task '{name}' is not available in this build ({e})") from e
    return task_cls(**checked_options(task_cls, name, options))


# What a task pack is, not how a user runs it: set by the pack, never from a config.
INTERNAL_FIELDS = {"name", "primary_metric", "eval_mode", "strategies"}


def checked_options(task_cls, name: str, options: dict) -> dict:
    """task.* options by the pack's field types (pydantic), so `labels: positive` or `max_new_tokens: lots` is one
    clear error here and not a crash after the model has loaded."""
    import dataclasses
    import typing

    from pydantic import ConfigDict, TypeAdapter, ValidationError

    hints = typing.get_type_hints(task_cls)
    allowed = sorted(f.name for f in dataclasses.fields(task_cls) if f.init and f.name not in INTERNAL_FIELDS)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UserError(f"task.{unknown[0]} is not an option of task '{name}'; its options are: {', '.join(allowed)}")
    checked = {}
    as_text = ConfigDict(coerce_numbers_to_str=True)  # labels: [1, 2, 3, 4, 5] are names too
    for key, value in options.items():
        try:
            checked[key] = TypeAdapter(hints[key], config=as_text).validate_python(value)
        except ValidationError as e:
            first = e.errors()[0]
            wants_list = "list" in str(hints[key]) and not isinstance(value, list)
            raise UserError(f"task.{key}: {first['msg']} (got {value!r})"
                            + ("; write a list, e.g. [negative, positive]" if wants_list else "")) from None
    return checked
