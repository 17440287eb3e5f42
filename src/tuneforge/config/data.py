"""Where a data split lives and how its columns map onto a task's fields."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DataSpec(BaseModel):
    """One split of a data set. Rows come back as dicts keyed by the task's field names."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="a file (tsv/csv/json/jsonl/parquet) or, for format=lines, a folder")
    format: Literal["auto", "tsv", "csv", "json", "jsonl", "parquet", "lines"] = Field(
        "auto", description="auto picks by extension; lines = line-aligned files in a folder (see `files`)"
    )
    text_column: str | None = Field(None, description="column holding the input text (renamed to `text`)")
    label_column: str | None = Field(None, description="column holding the label (renamed to `label`)")
    columns: dict[str, str] = Field(default_factory=dict, description="more renames: task field -> column in the file")
    files: dict[str, str] = Field(
        default_factory=dict,
        description="format=lines: task field -> file name inside `path`, e.g. {text: sents.txt, label: sentiments.txt}",
    )
    quoting: Literal["none", "csv"] = Field(
        "none", description="tsv only: none (SST-2: quotes are text) or csv (quoted fields may hold tabs/newlines)"
    )
    records_key: str | None = Field(None, description="json only: the key holding the list of records, e.g. data")
    header: bool = Field(True, description="tsv/csv: the first line names the columns")
    min_words: int | None = Field(
        None, ge=1, description="drop rows whose `text` has fewer words (SST-2 train mixes short phrases with sentences)"
    )
    limit: int | None = Field(None, ge=1, description="keep at most this many rows (after shuffling)")
    shuffle: bool = Field(False, description="shuffle rows before `limit`, with `seed`")
    seed: int = Field(0, description="shuffle seed")
    start: int = Field(0, ge=0, description="skip this many rows first (in file order, before shuffling)")

    def field_map(self) -> dict[str, str]:
        """task field -> file column, with text_column/label_column folded in."""
        mapping = dict(self.columns)
        if self.text_column:
            mapping["text"] = self.text_column
        if self.label_column:
            mapping["label"] = self.label_column
        return mapping
