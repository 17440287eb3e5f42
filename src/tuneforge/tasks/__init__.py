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
    import dataclasses

    allowed = {f.name for f in dataclasses.fields(task_cls) if f.init and f.name != "name"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UserError(
            f"task.{unknown[0]} is not an option of task '{name}'; its options are: {', '.join(sorted(allowed))}"
        )
    return task_cls(**options)
