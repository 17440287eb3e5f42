"""Pieces every recipe shares: config from the command line, task + data loading, timing."""

from __future__ import annotations

import argparse

from tuneforge.config import load_config
from tuneforge.data.readers import read_rows
from tuneforge.errors import UserError
from tuneforge.tasks import get_task


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="a recipe YAML (see recipes/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=1e-4 data.train.limit=500")


def split_config_args(args) -> tuple[str | None, list[str]]:
    """(YAML path, overrides); argparse puts a leading key=value into `config` when no YAML is given."""
    path, overrides = args.config, list(args.overrides)
    if path and "=" in path and not path.endswith((".yaml", ".yml")):
        overrides.insert(0, path)
        path = None
    return path, overrides


def config_from_args(cls, args):
    return load_config(cls, *split_config_args(args))


def build_task(cfg):
    return get_task(cfg.task.name, **cfg.task.options())


def load_split(task, spec, split: str) -> list[dict]:
    if spec is None:
        raise UserError(f"data.{split} is not set; give it a path (see recipes/*.yaml)")
    reader = getattr(task, "read", None)  # tasks with nested formats (SQuAD, chat) read their own files
    rows = reader(spec) if reader else read_rows(spec)
    rows = task.prepare(rows, spec.path)
    if not rows:
        raise UserError(f"data.{split}: {spec.path} gave no rows; check data.{split}.limit/start and the file")
    return rows


def truncate_sources(task, rows: list[dict], tok, split: str) -> list[dict]:
    """Cut over-long sources (articles, dialogues, contexts) on the source side; report how many."""
    if not hasattr(task, "truncate"):
        return rows
    rows = task.truncate(rows, tok)
    cut = sum(bool(r.get("truncated")) for r in rows)
    if cut:
        print(f"note: {cut} of {len(rows)} {split} rows had their source cut to the task's max_source_tokens")
    return rows
