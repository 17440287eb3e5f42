"""A task's rows from a recipe: build the task pack, read and prepare a split, cut over-long sources."""

from __future__ import annotations

from typing import NamedTuple

from tuneforge.errors import UserError
from tuneforge.tasks import get_task


class Probe(NamedTuple):
    """An evaluation beside the trained task (eval.probes): scored before and after training."""

    name: str
    task: object
    rows: list[dict]


def load_train_rows(cfg, task) -> list[dict]:
    """data.train's rows, or [] when it is not set."""
    return load_split(task, cfg.data.train, "train") if cfg.data.train else []


def load_dev_rows(cfg, task) -> list[dict]:
    """data.dev's rows cut to eval.limit, or [] when it is not set."""
    return load_split(task, cfg.data.dev, "dev")[: cfg.eval.limit] if cfg.data.dev else []


def load_rows(cfg, task) -> tuple[list[dict], list[dict]]:
    """(train rows or [], dev rows cut to eval.limit or [])."""
    return load_train_rows(cfg, task), load_dev_rows(cfg, task)


def build_task(cfg):
    return get_task(cfg.task.name, **cfg.task.options())


def build_probe(section, index: int) -> Probe:
    """eval.probes[index]: its task pack and dev rows cut to its `limit`. Any problem (an unknown task or option, a
    missing or empty file) is one UserError naming the probe, raised before a model is loaded."""
    where = f"eval.probes[{index}] ({section.name})"
    try:
        task = get_task(section.task.name, **section.task.options())
        rows = task.prepare(task.read(section.data), section.data.path)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    if not rows:
        raise UserError(f"{where}: {section.data.path} gave no rows; check its data.limit/start and the file")
    return Probe(section.name, task, rows[: section.limit])


def load_split(task, spec, split: str) -> list[dict]:
    if spec is None:
        raise UserError(f"data.{split} is not set; give it a path (see recipes/*.yaml)")
    rows = task.prepare(task.read(spec), spec.path)  # tasks with nested formats (SQuAD, chat) read their own files
    if not rows:
        raise UserError(f"data.{split}: {spec.path} gave no rows; check data.{split}.limit/start and the file")
    return rows


def truncate_sources(task, rows: list[dict], tok, split: str) -> list[dict]:
    """Cut over-long sources (articles, dialogues, contexts) on the source side; report how many."""
    rows = task.truncate(rows, tok)
    cut = sum(bool(r.get("truncated")) for r in rows)
    if cut:
        print(f"note: {cut} of {len(rows)} {split} rows had their source cut to the task's max_source_tokens")
    return rows
