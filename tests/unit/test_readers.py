"""Readers: every format, column mapping, start/shuffle/limit, each error message, and the real data sets."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuneforge.data import DataSpec, read_rows, sample_path
from tuneforge.errors import UserError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
VI = "giảng viên dạy rất nhiệt tình ."


def write(path: Path, text: str, newline: str = "\n") -> Path:
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


def rows(**kw) -> list[dict]:
    return read_rows(DataSpec(**{k: str(v) if isinstance(v, Path) else v for k, v in kw.items()}))


# -- formats ------------------------------------------------------------------

def test_tsv_keeps_quotes_and_trailing_space_and_maps_columns(tmp_path):
    f = write(tmp_path / "d.tsv", 'sentence\tlabel\tid\n"quoted" start \t1\ta\n' + VI + "\t0\tb\n")
    got = rows(path=f, text_column="sentence")
    assert got == [
        {"text": '"quoted" start ', "label": "1", "id": "a", "_line": 2},
        {"text": VI, "label": "0", "id": "b", "_line": 3},
    ]


def test_tsv_crlf_and_bom(tmp_path):
    f = tmp_path / "d.tsv"
    f.write_bytes("\ufeffsentence\tlabel\r\nhay quá\t1\r\ndở\t0\r\n".encode())
    got = rows(path=f, text_column="sentence")
    assert [(r["text"], r["label"]) for r in got] == [("hay quá", "1"), ("dở", "0")]


def test_tsv_csv_quoting_reads_tabs_and_newlines_inside_fields(tmp_path):
    f = write(tmp_path / "d.tsv", 'sentence\tlabel\n"first line\nsecond\twith tab"\t1\n"say ""hi"""\t0\n', "\r\n")
    got = rows(path=f, quoting="csv", text_column="sentence")
    assert [r["text"] for r in got] == ["first line\r\nsecond\twith tab", 'say "hi"']
    assert [r["_line"] for r in got] == [2, 4]


def test_headerless_columns_are_col0_col1(tmp_path):
    f = write(tmp_path / "d.txt", "good film\t1\nbad film\t0\n")
    got = rows(path=f, format="tsv", header=False, text_column="col0", label_column="col1")
    assert got[1] == {"text": "bad film", "label": "0", "_line": 2}


def test_csv(tmp_path):
    f = write(tmp_path / "d.csv", 'review,stars\n"Hay, rất hay",5\n' + VI + ",4\n")
    got = rows(path=f, text_column="review", label_column="stars")
    assert got == [{"text": "Hay, rất hay", "label": "5", "_line": 2}, {"text": VI, "label": "4", "_line": 3}]


def test_json_list_and_records_key(tmp_path):
    recs = [{"s": VI, "y": 2}, {"s": "ok", "y": 1}]
    plain = tmp_path / "a.json"
    plain.write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
    nested = tmp_path / "b.json"
    nested.write_text(json.dumps({"version": 1, "data": recs}), encoding="utf-8")
    want = [{"text": VI, "label": 2, "_line": 1}, {"text": "ok", "label": 1, "_line": 2}]
    assert rows(path=plain, text_column="s", label_column="y") == want
    assert rows(path=nested, records_key="data", text_column="s", label_column="y") == want


def test_jsonl_skips_blank_lines_and_counts_lines(tmp_path):
    f = write(tmp_path / "d.jsonl", '{"document": "' + VI + '", "summary": "ngắn"}\n\n{"document": "b", "summary": "c"}\n')
    got = rows(path=f, columns={"source": "document", "target": "summary"})
    assert got == [{"source": VI, "target": "ngắn", "_line": 1}, {"source": "b", "target": "c", "_line": 3}]


def test_parquet(tmp_path):
    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"sentence": [VI, "fine"], "label": [2, 1]}), f)
    got = rows(path=f, text_column="sentence")
    assert got == [{"text": VI, "label": 2, "_line": 1}, {"text": "fine", "label": 1, "_line": 2}]


def test_lines_folder_for_sentiment_and_translation(tmp_path):
    write(tmp_path / "sents.txt", VI + "\nmáy lạnh hỏng .\n")
    write(tmp_path / "sentiments.txt", "2\n0\n")
    got = rows(path=tmp_path, files={"text": "sents.txt", "label": "sentiments.txt"})
    assert got == [{"text": VI, "label": "2", "_line": 1}, {"text": "máy lạnh hỏng .", "label": "0", "_line": 2}]
    write(tmp_path / "t.en", "Hello .\n")
    write(tmp_path / "t.vi", "Xin chào .\n")
    assert rows(path=tmp_path, files={"source": "t.en", "target": "t.vi"}) == [
        {"source": "Hello .", "target": "Xin chào .", "_line": 1}
    ]


def test_mapped_field_wins_over_a_file_column_of_the_same_name(tmp_path):
    f = write(tmp_path / "d.tsv", "text\treview\tlabel\nold\tnew\t1\n")
    assert rows(path=f, text_column="review") == [{"text": "new", "label": "1", "_line": 2}]


# -- start, shuffle, limit ----------------------------------------------------

@pytest.fixture
def numbered(tmp_path) -> Path:
    return write(tmp_path / "n.tsv", "text\tlabel\n" + "".join(f"row {i}\t{i % 2}\n" for i in range(50)))


def test_start_then_limit_in_file_order(numbered):
    got = rows(path=numbered, start=10, limit=3)
    assert [r["text"] for r in got] == ["row 10", "row 11", "row 12"]
    assert [r["_line"] for r in got] == [12, 13, 14]


def test_shuffle_is_seeded_and_happens_after_start(numbered):
    a = rows(path=numbered, start=40, shuffle=True, seed=1, limit=5)
    b = rows(path=numbered, start=40, shuffle=True, seed=1, limit=5)
    c = rows(path=numbered, start=40, shuffle=True, seed=2, limit=5)
    assert a == b
    assert a != c
    assert all(int(r["text"].split()[1]) >= 40 for r in a)
    assert [r["text"] for r in a] != [f"row {i}" for i in range(40, 45)]


# -- errors -------------------------------------------------------------------

def error(**kw) -> str:
    with pytest.raises(UserError) as e:
        rows(**kw)
    return str(e.value)


def test_missing_file_names_given_and_resolved_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    msg = error(path="data/nope.tsv")
    assert "'data/nope.tsv'" in msg
    assert str(tmp_path / "data" / "nope.tsv") in msg
    assert "working directory" in msg


def test_missing_column_names_file_column_available_and_key(tmp_path):
    f = write(tmp_path / "d.tsv", "sentence\tlabel\nx\t1\n")
    msg = error(path=f, text_column="review")
    assert str(f) in msg and "'review'" in msg and "['sentence', 'label']" in msg and "text_column" in msg
    assert "columns.source" in error(path=f, columns={"source": "en"})


def test_missing_key_in_one_jsonl_record_names_the_line(tmp_path):
    f = write(tmp_path / "d.jsonl", '{"a": 1, "b": 2}\n{"a": 3}\n')
    msg = error(path=f, label_column="b")
    assert f"{f}:2" in msg and "'b'" in msg


def test_empty_after_start_or_empty_file(tmp_path):
    f = write(tmp_path / "d.tsv", "text\tlabel\nx\t1\n")
    msg = error(path=f, start=5)
    assert str(f) in msg and "no rows" in msg and "start=5" in msg
    empty = write(tmp_path / "e.tsv", "text\tlabel\n")
    assert "no rows" in error(path=empty)
    for name in ("zero.tsv", "zero.jsonl", "blank.csv"):  # not "no column 'text'": the file itself is empty
        nothing = write(tmp_path / name, "\n\n" if name.startswith("blank") else "")
        assert error(path=nothing, text_column="sentence") == f"{nothing}: the file is empty; point path at the file with the data"


def test_wrong_number_of_fields_names_file_and_line(tmp_path):
    f = write(tmp_path / "d.tsv", "sentence\tlabel\nok\t1\nbad\tone\t1\n")
    msg = error(path=f)
    assert f"{f}:3" in msg and "expected 2" in msg and "found 3" in msg
    c = write(tmp_path / "d.csv", "a,b\n1,2\n\n3\n")
    assert f"{c}:4" in error(path=c)


def test_unbalanced_quote_in_csv_mode(tmp_path):
    f = write(tmp_path / "d.tsv", 'sentence\tlabel\n"ok"\t1\n"broken" x\t0\n')
    assert f"{f}:3" in error(path=f, quoting="csv")


def test_line_aligned_files_with_different_counts(tmp_path):
    write(tmp_path / "sents.txt", "a\nb\nc\n")
    write(tmp_path / "labels.txt", "0\n1\n")
    msg = error(path=tmp_path, files={"text": "sents.txt", "label": "labels.txt"})
    assert "sents.txt has 3" in msg and "labels.txt has 2" in msg
    msg = error(path=tmp_path, files={"text": "sents.txt", "label": "missing.txt"})
    assert "missing.txt" in msg and "files.label" in msg and "labels.txt" in msg  # lists what is there


def test_bad_json_names_file_and_line(tmp_path):
    f = write(tmp_path / "d.json", '[\n  {"a": 1},\n  {"a": 2,}\n]\n')
    assert f"{f}:3" in error(path=f)
    lines = write(tmp_path / "lines.json", '{"a": 1}\n{"a": 2}\n')
    assert "format: jsonl" in error(path=lines)
    bad = write(tmp_path / "d.jsonl", '{"a": 1}\n{"a": \n')
    assert f"{bad}:2" in error(path=bad)
    top = write(tmp_path / "top.json", '{"data": [{"a": 1}]}')
    assert "records_key" in error(path=top) and "data" in error(path=top)


def test_not_utf8_and_unknown_extension(tmp_path):
    f = tmp_path / "d.tsv"
    f.write_bytes("text\nđúng\n".encode() + "café\n".encode("latin-1"))
    msg = error(path=f)
    assert f"{f}:3" in msg and "UTF-8" in msg
    assert "set format" in error(path=write(tmp_path / "d.dat", "x\n"))


# -- shipped samples and real data --------------------------------------------

def test_shipped_samples_are_balanced():
    train = rows(path=sample_path("sentiment_en.train.tsv"), text_column="sentence")
    dev = rows(path=sample_path("sentiment_en.dev.tsv"), text_column="sentence")
    assert len(train) == 90 and len(dev) == 30
    assert Counter(r["label"] for r in train) == {"0": 45, "1": 45}
    assert not {r["text"] for r in train} & {r["text"] for r in dev}
    vi = rows(path=sample_path("sentiment_vi.tsv"), text_column="sentence")
    assert Counter(r["label"] for r in vi) == {"0": 10, "1": 10, "2": 10}
    with pytest.raises(UserError, match="sentiment_en.tsv"):
        sample_path("nope.tsv")


needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data folder {SHARED_DATA} is absent")


@needs_data
def test_real_sst2_dev():
    got = rows(path=SHARED_DATA / "sentiment/sst2/dev.tsv", text_column="sentence")
    assert len(got) == 872
    assert Counter(r["label"] for r in got) == {"0": 428, "1": 444}
    assert got[0]["text"].strip() == "it 's a charming and often affecting journey ."


@needs_data
def test_real_uit_vsfc_dev_line_aligned():
    got = rows(path=SHARED_DATA / "sentiment/uit_vsfc/dev", files={"text": "sents.txt", "label": "sentiments.txt"})
    assert len(got) == 1583
    assert set(Counter(r["label"] for r in got)) == {"0", "1", "2"}
    assert got[-1]["_line"] == 1583


def test_tsv_and_csv_skip_blank_rows_and_name_the_line_of_a_row_of_the_wrong_width(tmp_path):
    tsv = write(tmp_path / "a.tsv", "text\tlabel\n\n \t \ngood\t1\nbad\n")
    with pytest.raises(UserError, match=r"a\.tsv:5: expected 2 tab-separated fields \(text, label\), found 1; "
                                        r"if fields are quoted and hold tabs or newlines set quoting: csv$"):
        rows(path=tsv)
    csv_file = write(tmp_path / "a.csv", 'text,label\n"two\nlines",1\n,\nbad\n')
    with pytest.raises(UserError, match=r"a\.csv:5: expected 2 fields \(text, label\), found 1; "
                                        r"check the quoting of that row$"):
        rows(path=csv_file)
    broken = write(tmp_path / "b.csv", 'text,label\ngood,1\n"open"x,0\n')
    with pytest.raises(UserError, match=r"b\.csv:3: cannot parse the row \(.*\); check its quotes$"):
        rows(path=broken)
    assert [r["text"] for r in rows(path=write(tmp_path / "c.csv", 'text,label\n"two\nlines",1\n,\nok,0\n'))] \
        == ["two\nlines", "ok"]
