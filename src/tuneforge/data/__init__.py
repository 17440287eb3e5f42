"""Data: where a split lives (DataSpec), reading it (read_rows), and the samples that ship with tuneforge."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from tuneforge.config.data import DataSpec
from tuneforge.data.readers import read_rows
from tuneforge.errors import UserError

__all__ = ["DataSpec", "read_rows", "sample_path", "sample_names"]


def sample_names() -> list[str]:
    return sorted(p.name for p in files("tuneforge.data").joinpath("samples").iterdir() if p.is_file())


def sample_path(name: str) -> Path:
    """Path of a data file shipped in tuneforge/data/samples, e.g. sample_path("sentiment_en.train.tsv")."""
    path = Path(str(files("tuneforge.data").joinpath("samples", name)))
    if not path.is_file():
        raise UserError(f"no sample named '{name}'; samples: {', '.join(sample_names())}")
    return path
