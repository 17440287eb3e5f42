"""QA pack: SQuAD v1.1 normalisation, EM/F1 max over gold answers, parsing, article splits."""

import json

import pytest

from tuneforge.config.data import DataSpec
from tuneforge.errors import UserError
from tuneforge.tasks import get_task
from tuneforge.tasks.qa import exact_match, normalize_answer, squad_metrics, token_f1


@pytest.mark.parametrize("text, want", [
    ("The Denver Broncos!", "denver broncos"),
    ("  an   apple, a pear and THE  end. ", "apple pear and end"),
    ("theory of relativity", "theory of relativity"),   # 'the' inside a word stays
    ("Nguyễn Văn A.", "nguyễn văn"),                    # 'a' is an article even here: the official rule
    ("1,000 km", "1000 km"),
])
def test_official_normalisation(text, want):
    assert normalize_answer(text) == want


def test_em_f1_hand_computed():
    assert exact_match("the Broncos", "Broncos.") == 1.0
    # pred tokens: denver broncos won; gold: broncos → P=1/3, R=1 → F1=0.5
    assert token_f1("Denver Broncos won", "Broncos") == pytest.approx(0.5)
    assert token_f1("", "x") == 0.0
    m = squad_metrics(["Denver Broncos", "Carolina", None], [["Broncos", "Denver Broncos"], ["Panthers"], ["x"]])
    assert m["exact_match"] == pytest.approx(100 / 3)
    assert m["f1"] == pytest.approx(100 / 3)
    assert m["unparseable"] == 1


def test_max_over_gold_answers():
    m = squad_metrics(["Santa Clara, California"], [["Levi's Stadium", "Santa Clara", "Santa Clara, California"]])
    assert m["exact_match"] == 100.0 and m["f1"] == 100.0


@pytest.mark.parametrize("text, strategy, want", [
    ("Denver Broncos.\nThey won.", "zero_shot", "Denver Broncos"),
    ("The answer is: Paris", "zero_shot", "Paris"),
    ("Answer: Paris.", "zero_shot", "Paris"),
    ("Answers to prayers", "zero_shot", "Answers to prayers"),
    ("The context says the team won.\nAnswer: Denver Broncos", "cot", "Denver Broncos"),
    ("", "zero_shot", None),
])
def test_parse(text, strategy, want):
    assert get_task("qa").parse(text, strategy) == want


def test_prompt_conversation_and_cot_wording():
    task = get_task("qa")
    row = task.prepare([{"context": "Hà Nội là thủ đô.", "question": "Thủ đô là gì?", "answers": ["Hà Nội"]}], "x")[0]
    assert "Context: Hà Nội là thủ đô." in task.prompt(row)[-1]["content"]
    assert "Answer: <short answer>" in task.prompt(row, "cot")[-1]["content"]
    assert task.conversation(row)[-1] == {"role": "assistant", "content": "Hà Nội"}
    with pytest.raises(UserError, match="answers"):
        task.prepare([{"context": "c", "question": "q", "_line": 3}], "x.jsonl")


def test_read_splits_squad_by_article(tmp_path):
    data = [{"title": f"T{a}", "paragraphs": [{"context": "C", "qas": [
        {"id": f"{a}", "question": "Q", "answers": [{"text": "C", "answer_start": 0}]}]}]} for a in range(5)]
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": "1.1", "data": data}), encoding="utf-8")
    task = get_task("qa")
    dev = task.prepare(task.read(DataSpec(path=str(path), start=3, limit=2)), str(path))
    assert [r["article"] for r in dev] == [3, 4] and dev[0]["answers"] == ["C"]
