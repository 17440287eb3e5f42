"""Summarization pack: prompts, parsing, ROUGE with a tokenizer that keeps Vietnamese letters."""

import pytest
from rouge_score.rouge_scorer import RougeScorer

from tuneforge.tasks import get_task
from tuneforge.tasks.summarization import UnicodeWordTokenizer, rouge_metrics


def test_prompt_and_first_reference_as_target():
    task = get_task("summarization")
    row = task.prepare([{"dialogue": "#Person1#: Hi\n#Person2#: Hello", "summary1": "They greet.", "summary2": "Hi."}], "d")[0]
    assert "dialogue" in task.prompt(row)[-1]["content"] and row["source"] in task.prompt(row)[-1]["content"]
    assert task.conversation(row)[-1] == {"role": "assistant", "content": "They greet."}
    assert task.reference(row) == ["They greet.", "Hi."]


def test_parse_drops_prefix_and_joins_lines():
    task = get_task("summarization")
    assert task.parse("Summary: Two people\nmeet.") == "Two people meet."
    assert task.parse("Tóm tắt: Hai người gặp nhau.") == "Hai người gặp nhau."
    assert task.parse("  ") is None


def test_tokenizer_keeps_vietnamese_letters():
    assert UnicodeWordTokenizer().tokenize("Nhân_viên Công-ty Địa ốc, 2 người!") == [
        "nhân", "viên", "công", "ty", "địa", "ốc", "2", "người"]
    # Decomposed input (combining marks) gives the same tokens as precomposed.
    assert UnicodeWordTokenizer().tokenize("Vie\u0302\u0323t") == ["việt"]


def test_vietnamese_rouge_is_non_zero_where_the_default_tokenizer_sees_little():
    pred, ref = "hội đồng nhân dân tỉnh", "ủy ban nhân dân tỉnh"
    ours = rouge_metrics([pred], [[ref]])
    # 3 of 5 words in common: P = R = 3/5.
    assert ours["rouge1"] == pytest.approx(60.0)
    assert ours["rouge2"] == pytest.approx(100 * 2 / 4)
    default = RougeScorer(["rouge1"]).score(ref, pred)["rouge1"].fmeasure
    assert default * 100 != pytest.approx(ours["rouge1"])  # the default drops ộ, ồ, ủ, ...


def test_hand_computed_rouge_and_reference_aggregation():
    m = rouge_metrics(["the cat sat"], [["the cat ran", "a dog sat down"]])
    # vs ref 1: 2/3 unigrams both ways → F1 2/3; vs ref 2: 1 common, P=1/3, R=1/4 → F1 2/7.
    assert m["rouge1"] == pytest.approx(100 * 2 / 3)
    assert m["rouge1_mean_ref"] == pytest.approx(100 * (2 / 3 + 2 / 7) / 2)
    assert m["rougeL"] == pytest.approx(100 * 2 / 3) and m["rouge2"] == pytest.approx(50.0)
    assert m["reference_aggregation"] == "max"


def test_rouge_lsum_splits_sentences_and_none_scores_zero():
    m = rouge_metrics(["a b. c d.", None], ["c d. a b.", "x"])
    assert m["rougeLsum"] == pytest.approx(50.0) and m["rougeL"] < m["rougeLsum"]
    assert m["unparseable"] == 1 and m["n"] == 2
