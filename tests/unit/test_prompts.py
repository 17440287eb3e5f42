"""Few-shot draws that fit the context, chain-of-thought parsing, source truncation."""

import pytest

from tuneforge.errors import UserError
from tuneforge.tasks.prompts import (
    count_tokens,
    draw_shots,
    final_answer,
    first_line,
    labels_in_turn,
    truncate_field,
    truncate_text,
)
from tuneforge.tasks.qa import QATask


@pytest.fixture(scope="module")
def tok():
    from tuneforge.models import load_tokenizer

    try:
        return load_tokenizer(None)
    except Exception as e:  # the embedded model is imported by `tuneforge models import`
        pytest.skip(f"embedded tokenizer not available: {e}")


def qa_row(i, words=5):
    return {"context": " ".join(["word"] * words) + f" fact {i}.", "question": f"What is fact {i}?", "answers": [f"fact {i}"]}


def test_final_answer_takes_the_last_answer_line():
    text = "The answer: maybe X.\nReasoning goes on.\nAnswer: Paris\nextra"
    assert final_answer(text) == "Paris"
    assert final_answer("step one\nstep two\nLondon") == "London"
    assert final_answer("Câu trả lời.\nAnswer： Hà Nội") == "Hà Nội"
    assert final_answer("") == ""


def test_first_line_skips_blank_lines():
    assert first_line("\n\n  Xin chào  \nsecond") == "Xin chào"


def test_truncate_text_cuts_vietnamese_at_a_token_boundary(tok):
    text = "Làm sao tôi có thể trình bày trong 10 phút về sợi dây liên kết những người phụ nữ"
    cut, was_cut = truncate_text(text, tok, 10)
    assert was_cut and text.startswith(cut) and len(cut) < len(text)
    assert len(tok(cut, add_special_tokens=False)["input_ids"]) <= 10
    same, was_cut = truncate_text(text, tok, 1000)
    assert same == text and not was_cut


def test_truncate_field_flags_rows_and_keeps_targets(tok):
    rows = [{"source": "a " * 300, "target": "b " * 300}, {"source": "short", "target": "t"}]
    out = truncate_field(rows, "source", tok, 50)
    assert [r["truncated"] for r in out] == [True, False]
    assert out[0]["target"] == rows[0]["target"]
    assert all(r["truncated"] is False for r in truncate_field(rows, "source", tok, None))


def test_draw_shots_is_seeded_and_distinct():
    train = [{"i": i} for i in range(50)]
    a, b = draw_shots(train, 5, seed=1), draw_shots(train, 5, seed=1)
    assert a == b and len({r["i"] for r in a}) == 5
    assert draw_shots(train, 5, seed=2) != a
    assert draw_shots(train, 0) == []
    with pytest.raises(UserError):
        draw_shots([], 3)


def test_labelled_shots_take_turns_by_label():
    # 4 of 40 rows positive: random draws of 4 would mostly be all-negative
    train = [{"i": i, "label": int(i % 13 == 0)} for i in range(40)]
    shots = draw_shots(train, 4, seed=0)
    labels = [r["label"] for r in shots]
    assert sorted(labels) == [0, 0, 1, 1] and labels[0] != labels[1] and labels[2] != labels[3]
    assert len({r["i"] for r in shots}) == 4
    three = [{"i": i, "label": i % 3} for i in range(9)]
    assert sorted(r["label"] for r in draw_shots(three, 3, seed=5)) == [0, 1, 2]
    unlabelled = [{"i": i} for i in range(10)]  # translation, QA, ...: plain seeded order
    assert labels_in_turn(unlabelled, [3, 1, 2]) == [3, 1, 2]


def test_draw_shots_fit_the_context(tok):
    task = QATask()
    train = [qa_row(i, words=5 if i % 2 else 400) for i in range(40)]  # every other row is long
    dev = [qa_row(100), qa_row(101, words=30)]
    base = count_tokens(tok, task.prompt(dev[1]))
    shots = draw_shots(train, 3, seed=0, task=task, tok=tok, max_len=base + 200, eval_rows=dev, max_new_tokens=20)
    assert len(shots) == 3 and all(len(s["context"].split()) < 50 for s in shots)
    assert count_tokens(tok, task.prompt(dev[1], "few_shot", shots)) + 20 <= base + 200
    # A budget with room for one short example gives one, not three.
    one = draw_shots(train, 3, seed=0, task=task, tok=tok, max_len=base + 90, eval_rows=dev, max_new_tokens=20)
    assert len(one) == 1
