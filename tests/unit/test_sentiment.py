import pytest

from tuneforge.errors import UserError
from tuneforge.tasks import get_task
from tuneforge.tasks.sentiment import classification_metrics


def test_parser_reads_label_words_robustly():
    task = get_task("sentiment", labels=["negative", "neutral", "positive"])
    assert task.parse("Positive") == 2
    assert task.parse("The sentiment of this text is negative.") == 0
    assert task.parse("  neutral\n") == 1
    assert task.parse("I think it's positively great") is None  # no whole label word
    assert task.parse("") is None
    assert task.parse("It could be negative at first... Answer: positive", strategy="cot") == 2


def test_metrics_match_hand_computation():
    # refs: 0 0 1 1 1; preds: 0 1 1 1 None -> tp0=1, tp1=2
    m = classification_metrics([0, 1, 1, 1, None], [0, 0, 1, 1, 1], ["neg", "pos"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    # neg: P=1/1, R=1/2, F1=2/3; pos: P=2/3, R=2/3, F1=2/3
    assert m["per_class"]["neg"]["precision"] == pytest.approx(1.0)
    assert m["per_class"]["neg"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["pos"]["precision"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx(2 / 3)
    assert m["unparseable"] == 1
    assert m["confusion_matrix"]["rows"] == [[1, 1, 0], [0, 2, 1]]


def test_prepare_maps_indices_and_names_and_rejects_bad_labels():
    task = get_task("sentiment", labels=["negative", "positive"])
    rows = task.prepare([{"text": " good ", "label": "1", "_line": 2}, {"text": "bad", "label": "Negative", "_line": 3}], "f.tsv")
    assert [r["label"] for r in rows] == [1, 0] and rows[0]["text"] == "good"
    with pytest.raises(UserError, match=r"f\.tsv:7: label '5'"):
        task.prepare([{"text": "x", "label": "5", "_line": 7}], "f.tsv")
    with pytest.raises(UserError, match=r"f\.tsv:4: empty text"):
        task.prepare([{"text": "  ", "label": "1", "_line": 4}], "f.tsv")


def test_unknown_task_option_is_named():
    with pytest.raises(UserError, match="task.lables is not an option of task 'sentiment'"):
        get_task("sentiment", lables=["a", "b"])


def test_conversation_targets_the_label_word_and_prompt_lists_choices():
    task = get_task("sentiment", labels=["tiêu cực", "tích cực"])
    conv = task.conversation({"text": "hay quá", "label": 1})
    assert conv[-1] == {"role": "assistant", "content": "tích cực"}
    assert "tiêu cực or tích cực" in conv[-2]["content"] and "hay quá" in conv[-2]["content"]
    assert task.parse("Đây là tích cực") == 1
