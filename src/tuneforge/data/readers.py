"""Read one data split (TSV, CSV, JSON, JSONL, Parquet or line-aligned files) into rows keyed by task fields.

Every row carries `_line`: the 1-based line in the file where it starts (tsv/csv/jsonl/lines) or its record
number (json/parquet), so that later checks can say `file:line`. Cell values are kept verbatim (SST-2's
trailing space stays; tasks strip). Files without a header get columns named col0, col1, ...
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

from tuneforge.config.data import DataSpec
from tuneforge.errors import UserError

_EXTENSIONS = {
    ".tsv": "tsv", ".tab": "tsv", ".csv": "csv", ".json": "json",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet",
}


def read_rows(spec: DataSpec) -> list[dict]:
    """Rows of `spec` after `start`, seeded `shuffle` and `limit`; raises UserError on any bad input."""
    path = Path(spec.path)
    fmt = detect_format(spec)
    columns, records = _READERS[fmt](path, spec)
    if not columns and not records:
        raise UserError(f"{path}: the file is empty; point path at the file with the data")
    rows = _rename(records, columns, spec, path, fmt)
    total = len(rows)
    rows = rows[spec.start:]
    if spec.min_words:
        rows = [r for r in rows if len(str(r.get("text", "")).split()) >= spec.min_words]
    if spec.shuffle:
        random.Random(spec.seed).shuffle(rows)
    if spec.limit is not None:
        rows = rows[: spec.limit]
    if not rows:
        raise UserError(
            f"{spec.path}: no rows to use ({total} rows in the file, start={spec.start}, min_words={spec.min_words}, limit={spec.limit}); "
            "point path at a file with data or lower start"
        )
    return rows


def detect_format(spec: DataSpec) -> str:
    path = Path(spec.path)
    if not path.exists():
        raise UserError(
            f"data path not found: '{spec.path}' (resolved to {path.resolve()}); relative paths are resolved "
            f"from the working directory {Path.cwd()}; fix the path or run from the right folder"
        )
    if spec.format != "auto":
        fmt = spec.format
    elif path.is_dir():
        fmt = "lines"
    else:
        fmt = _EXTENSIONS.get(path.suffix.lower())
        if fmt is None:
            raise UserError(
                f"{spec.path}: cannot tell the format from the extension '{path.suffix}'; "
                "set format to one of tsv, csv, json, jsonl, parquet, lines"
            )
    if fmt == "lines" and not path.is_dir():
        raise UserError(f"{spec.path}: format lines needs a folder holding the line-aligned files, not a file")
    if fmt != "lines" and path.is_dir():
        raise UserError(
            f"{spec.path} is a folder; point path at a {fmt} file, or use format: lines with "
            "files: {field: file name}"
        )
    return fmt


def _text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 (byte {e.start}); save the file as UTF-8") from None


def _split_lines(text: str) -> list[str]:
    """Lines without their terminator (\\n or \\r\\n); a final newline does not make an extra line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


# Each reader returns (column names, [(line, cells)]): cells is a list aligned with the column names for
# tabular formats, or a dict for json/jsonl, whose records may differ in their keys.

def _read_tsv(path: Path, spec: DataSpec):
    if spec.quoting == "csv":
        return _read_delimited(path, spec, "\t")
    rows = enumerate((line.split("\t") for line in _split_lines(_text(path))), 1)
    return _table(path, spec, rows, "tab-separated fields",
                  "if fields are quoted and hold tabs or newlines set quoting: csv")


def _read_csv(path: Path, spec: DataSpec):
    return _read_delimited(path, spec, ",")


def _read_delimited(path: Path, spec: DataSpec, delimiter: str):
    reader = csv.reader(io.StringIO(_text(path), newline=""), delimiter=delimiter, strict=True)
    start = 1  # the line the row being read starts on (a quoted field may span lines)

    def rows():
        nonlocal start
        for cells in reader:
            number, start = start, reader.line_num + 1
            yield number, cells

    try:
        return _table(path, spec, rows(), "fields", "check the quoting of that row")
    except csv.Error as e:
        raise UserError(f"{path}:{start}: cannot parse the row ({e}); check its quotes") from None


def _table(path: Path, spec: DataSpec, rows, fields: str, hint: str):
    """(column names, [(line, cells)]) from (line, cells) pairs: blank rows skipped, the first row the header
    (col0, col1, ... with header: false), every other row exactly as wide."""
    records, header = [], None
    for number, cells in rows:
        if not any(c.strip() for c in cells):
            continue
        if header is None:
            header = cells if spec.header else [f"col{i}" for i in range(len(cells))]
            if spec.header:
                continue
        if len(cells) != len(header):
            raise UserError(f"{path}:{number}: expected {len(header)} {fields} ({', '.join(header)}), "
                            f"found {len(cells)}; {hint}")
        records.append((number, cells))
    return header or [], records


def _read_json(path: Path, spec: DataSpec):
    try:
        obj = json.loads(_text(path))
    except json.JSONDecodeError as e:
        hint = "; if it holds one object per line set format: jsonl" if e.msg == "Extra data" else ""
        raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno}){hint}") from None
    if spec.records_key is not None:
        if not isinstance(obj, dict) or spec.records_key not in obj:
            keys = sorted(obj) if isinstance(obj, dict) else []
            raise UserError(f"{path}: no key '{spec.records_key}' at the top level (keys: {keys}); fix records_key")
        obj = obj[spec.records_key]
    if isinstance(obj, dict):
        lists = [k for k, v in obj.items() if isinstance(v, list)]
        raise UserError(
            f"{path}: the top level is an object, not a list of records; set records_key to the key holding "
            f"the records (keys with lists: {lists})"
        )
    if not isinstance(obj, list):
        raise UserError(f"{path}: expected a list of records, found {type(obj).__name__}")
    for i, rec in enumerate(obj):
        if not isinstance(rec, dict):
            raise UserError(f"{path}: record {i + 1} is a {type(rec).__name__}, expected an object")
    records = list(enumerate(obj, 1))
    return _columns(records), records


def _read_jsonl(path: Path, spec: DataSpec):
    records = []
    for number, line in enumerate(_split_lines(_text(path)), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{number}: invalid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(rec, dict):
            raise UserError(f"{path}:{number}: expected a JSON object per line, found {type(rec).__name__}")
        records.append((number, rec))
    return _columns(records), records


def _read_parquet(path: Path, spec: DataSpec):
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise UserError(f"{path}: cannot read as Parquet ({e})") from None
    data = table.to_pydict()
    return table.column_names, list(enumerate(zip(*data.values(), strict=True), 1))


def _read_lines(path: Path, spec: DataSpec):
    if not spec.files:
        raise UserError(
            f"{spec.path}: format lines needs files: {{field: file name}}, e.g. "
            "{text: sents.txt, label: sentiments.txt}"
        )
    columns = {}
    for field, name in spec.files.items():
        file = path / name
        if not file.is_file():
            raise UserError(
                f"{file}: not found (resolved to {file.resolve()}); files.{field} names a file inside "
                f"{spec.path}, which holds: {sorted(p.name for p in path.iterdir())}"
            )
        columns[field] = (file, _split_lines(_text(file)))
    (first, (f0, l0)), *rest = columns.items()
    for field, (file, lines) in rest:
        if len(lines) != len(l0):
            raise UserError(
                f"line-aligned files differ in length: {f0} has {len(l0)} lines, {file} has {len(lines)}; "
                f"files.{first} and files.{field} must have one line per example"
            )
    values = [lines for _, lines in columns.values()]
    return list(columns), list(enumerate(zip(*values, strict=True), 1))


def _columns(records) -> list[str]:
    seen: dict[str, None] = {}
    for _, rec in records:
        seen.update(dict.fromkeys(rec))
    return list(seen)


_READERS = {
    "tsv": _read_tsv, "csv": _read_csv, "json": _read_json,
    "jsonl": _read_jsonl, "parquet": _read_parquet, "lines": _read_lines,
}


def _spec_key(field: str, fmt: str) -> str:
    if fmt == "lines":
        return f"files.{field}"
    return {"text": "text_column", "label": "label_column"}.get(field, f"columns.{field}")


def _rename(records, columns: list[str], spec: DataSpec, path: Path, fmt: str) -> list[dict]:
    """Rename file columns to task fields (other columns stay as they are) and add `_line`."""
    mapping = spec.field_map()
    for field, col in mapping.items():
        if col not in columns:
            raise UserError(
                f"{path}: no column '{col}' (wanted for field '{field}'); available columns: {columns}; "
                f"set {_spec_key(field, fmt)} to one of them"
            )
    if fmt in ("json", "jsonl"):
        return _rename_records(records, mapping, path)
    # Tabular: work out the renamed header once; a mapped field wins over a file column of the same name.
    names, index = [], []
    for i, col in enumerate(columns):
        fields = [f for f, c in mapping.items() if c == col]
        if not fields and col in mapping:
            continue
        for name in fields or [col]:
            names.append(name)
            index.append(i)
    if index == list(range(len(columns))):
        return [dict(zip(names, cells, strict=True), _line=line) for line, cells in records]
    return [dict(zip(names, [cells[i] for i in index], strict=True), _line=line) for line, cells in records]


def _rename_records(records, mapping: dict[str, str], path: Path) -> list[dict]:
    renamed_away = set(mapping.values()) - set(mapping)
    rows = []
    for line, rec in records:
        row = {k: v for k, v in rec.items() if k not in renamed_away}
        for field, col in mapping.items():
            if col not in rec:
                raise UserError(f"{path}:{line}: the record has no '{col}' (field '{field}'); its keys: {list(rec)}")
            row[field] = rec[col]
        row["_line"] = line
        rows.append(row)
    return rows
