"""Task-specific layouts: SQuAD, DialogSum, VietNews, parallel text, chat formats and mixes, MT-Bench."""

import json

import pytest

from tuneforge.config.data import DataSpec
from tuneforge.data.formats import (
    chat_messages,
    desegment,
    parse_direction,
    read_chat,
    read_chat_mix,
    read_mt_bench,
    read_parallel,
    read_squad,
    summary_row,
)
from tuneforge.errors import UserError


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def squad_file(tmp_path, n_articles=3):
    data = [{"title": f"T{a}", "paragraphs": [{"context": f"Context {a}.{p}", "qas": [
        {"id": f"{a}-{p}-{q}", "question": f"Q{q}?", "answers": [{"text": "Context", "answer_start": 0}]}
        for q in range(2)]} for p in range(2)]} for a in range(n_articles)]
    return write(tmp_path / "squad.json", json.dumps({"version": "1.1", "data": data}))


def test_squad_flattens_by_article(tmp_path):
    path = squad_file(tmp_path)
    rows = read_squad(path)
    assert len(rows) == 3 * 2 * 2
    assert rows[0] == {**rows[0], "article": 0, "paragraph": 0, "context": "Context 0.0", "question": "Q0?",
                       "answers": ["Context"], "title": "T0"}
    dev = read_squad(path, first_article=1, n_articles=1)
    assert {r["article"] for r in dev} == {1} and len(dev) == 4


def test_squad_without_answers_is_a_user_error(tmp_path):
    bad = {"data": [{"title": "x", "paragraphs": [{"context": "c", "qas": [{"id": "1", "question": "q", "answers": []}]}]}]}
    with pytest.raises(UserError, match="no answers"):
        read_squad(write(tmp_path / "b.json", json.dumps(bad)))


def test_dialogsum_one_and_three_references():
    one = summary_row({"dialogue": "#Person1#: Hi", "summary": " A greets. "}, "f:1")
    assert one["references"] == ["A greets."] and one["kind"] == "dialogue" and one["source"] == "#Person1#: Hi"
    three = summary_row({"dialogue": "d", "summary1": "s1", "summary2": "s2", "summary3": "s3", "topic1": "t"}, "f:2")
    assert three["references"] == ["s1", "s2", "s3"]
    with pytest.raises(UserError, match="no reference"):
        summary_row({"dialogue": "d"}, "f:3")
    with pytest.raises(UserError, match="no source"):
        summary_row({"summary": "s"}, "f:4")


def test_vietnews_is_desegmented():
    row = summary_row({"article": "Viện_kiểm_sát nhân_dân , hôm_nay", "abstract": "Khởi_tố hai nhân_viên"}, "f:1")
    assert row["source"] == "Viện kiểm sát nhân dân , hôm nay"
    assert row["references"] == ["Khởi tố hai nhân viên"]
    assert desegment("snake_case in a _word_ stays_") == "snake case in a _word_ stays_"
    kept = summary_row({"article": "a_b", "abstract": "c_d"}, "f:1", desegment_text=False)
    assert kept["source"] == "a_b"


def test_parse_direction():
    assert parse_direction("en-vi") == ("en", "vi")
    assert parse_direction("VI → EN") == ("vi", "en")
    assert parse_direction("en->fr") == ("en", "fr")
    with pytest.raises(UserError):
        parse_direction("english")


def test_parallel_tsv_and_line_aligned(tmp_path):
    tsv = write(tmp_path / "p.tsv", "docid\tseg_id\ten\tvi\n1\t1\tHello .\tXin chào .\n1\t2\tThanks\tCảm ơn\n")
    rows = read_parallel(tsv, "vi-en")
    assert [(r["source"], r["target"]) for r in rows] == [("Xin chào .", "Hello ."), ("Cảm ơn", "Thanks")]
    write(tmp_path / "x.en", "one\ntwo\n")
    write(tmp_path / "x.vi", "một\nhai\n")
    lines = read_parallel(str(tmp_path), "en-vi", files={"en": "x.en", "vi": "x.vi"})
    assert [(r["source"], r["target"]) for r in lines] == [("one", "một"), ("two", "hai")]
    with pytest.raises(UserError, match="direction en-fr"):
        read_parallel(tsv, "en-fr")


def test_chat_formats_give_the_same_messages():
    want = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Chào"}, {"role": "user", "content": "Task\n\nInput"},
            {"role": "assistant", "content": "Done"}]
    alpaca = {"instruction": "Task", "input": "Input", "output": "Done", "history": [["Hi", "Chào"]], "system": "Be brief."}
    sharegpt = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                                  {"from": "gpt", "value": "Chào"}, {"from": "human", "value": "Task\n\nInput"},
                                  {"from": "gpt", "value": "Done"}]}
    openai = {"messages": want}
    for row in (alpaca, sharegpt, openai):
        assert chat_messages(row, "f:1") == want
    assert chat_messages({"instruction": "Q", "input": "", "output": "A"}, "f:1") == [
        {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]


@pytest.mark.parametrize("row, match", [
    ({"messages": [{"role": "user", "content": "a"}]}, "end with the assistant"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "alternate"),
    ({"conversations": [{"from": "robot", "value": "a"}]}, "unknown from"),
    ({"prompt": "x"}, "not a chat row"),
])
def test_bad_chat_rows(row, match):
    with pytest.raises(UserError, match=match):
        chat_messages(row, "f:1")


def test_chat_mix_holds_back_disjoint_rows(tmp_path):
    write(tmp_path / "a.json", json.dumps([{"instruction": f"a{i}", "input": "", "output": "x"} for i in range(30)]))
    write(tmp_path / "b.jsonl", "".join(json.dumps({"messages": [{"role": "user", "content": f"b{i}"},
                                                                  {"role": "assistant", "content": "y"}]}) + "\n"
                                        for i in range(20)))
    spec = DataSpec(path=str(tmp_path), files={"alpaca": "a.json", "openai": "b.jsonl"}, seed=3)
    dev = read_chat_mix(spec.model_copy(update={"limit": 10}))
    train = read_chat_mix(spec.model_copy(update={"start": 10}))
    assert len(dev) == 10 and len(train) == 40
    key = {(r["_source"], r["_line"]) for r in dev}
    assert not key & {(r["_source"], r["_line"]) for r in train}
    assert {r["_source"] for r in dev + train} == {"alpaca", "openai"}
    assert dev == read_chat_mix(spec.model_copy(update={"limit": 10}))  # seeded


def test_read_chat_and_mt_bench(tmp_path):
    path = write(tmp_path / "c.json", json.dumps([{"instruction": "Xin chào", "input": "", "output": "Chào bạn"}]))
    assert read_chat(path)[0]["messages"][1]["content"] == "Chào bạn"
    q = write(tmp_path / "q.jsonl", json.dumps({"question_id": 81, "category": "writing", "turns": ["One?", "Two?"]}) + "\n")
    rows = read_mt_bench(q)
    assert rows[0]["messages"] == [{"role": "user", "content": "One?"}] and rows[0]["question_id"] == 81
    assert read_mt_bench(q, turn=2)[0]["messages"][0]["content"] == "Two?"
