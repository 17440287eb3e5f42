"""Translation pack: direction, prompts, parsing, sacreBLEU/chrF."""

import pytest
import sacrebleu

from tuneforge.errors import UserError
from tuneforge.tasks import get_task
from tuneforge.tasks.translation import translation_metrics


def rows(task):
    return task.prepare([{"en": "I love you .", "vi": "Anh yêu em .", "_line": 2}], "pairs.tsv")


def test_direction_picks_columns_and_languages():
    en_vi, vi_en = get_task("translation", direction="en-vi"), get_task("translation", direction="vi-en")
    assert rows(en_vi)[0]["source"] == "I love you ." and rows(en_vi)[0]["target"] == "Anh yêu em ."
    assert rows(vi_en)[0]["source"] == "Anh yêu em ." and vi_en.reference(rows(vi_en)[0]) == "I love you ."
    msgs = vi_en.prompt(rows(vi_en)[0])
    assert msgs[-1]["role"] == "user" and "Vietnamese text into English" in msgs[-1]["content"]
    assert msgs[-1]["content"].endswith("Anh yêu em .")
    conv = en_vi.conversation(rows(en_vi)[0])
    assert conv[-1] == {"role": "assistant", "content": "Anh yêu em ."}


def test_few_shot_puts_examples_as_earlier_turns():
    task = get_task("translation")
    shot = task.prepare([{"en": "Hello", "vi": "Xin chào"}], "x")
    msgs = task.prompt(rows(task)[0], "few_shot", shot)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"] and msgs[1]["content"] == "Xin chào"


def test_missing_columns_name_the_row():
    with pytest.raises(UserError, match=r"pairs.tsv:7.*'en' and 'fr'"):
        get_task("translation", direction="en-fr").prepare([{"en": "a", "vi": "b", "_line": 7}], "pairs.tsv")


@pytest.mark.parametrize("text, want", [
    ("Xin chào thế giới", "Xin chào thế giới"),
    ("Translation: Xin chào\n\nThis means hello.", "Xin chào"),
    ("Here is the translation: \"Xin chào\"", "Xin chào"),
    ("Vietnamese translation: Cảm ơn", "Cảm ơn"),
    ("   \n", None),
])
def test_parse(text, want):
    assert get_task("translation").parse(text) == want


def test_bleu_and_chrf_match_sacrebleu():
    hyps = ["Anh yêu em rất nhiều .", "Hôm nay trời đẹp", None]
    refs = ["Anh yêu em nhiều lắm .", "Hôm nay trời rất đẹp", "Cảm ơn"]
    m = translation_metrics(hyps, refs)
    filled = [h or "" for h in hyps]
    assert m["bleu"] == pytest.approx(sacrebleu.corpus_bleu(filled, [refs]).score)
    assert m["chrf"] == pytest.approx(sacrebleu.corpus_chrf(filled, [refs]).score)
    assert 0 < m["bleu"] < 100 and m["unparseable"] == 1
    assert "tok:13a" in m["bleu_signature"] and "nrefs:1" in m["bleu_signature"]


def test_bleu_perfect_and_hand_computed():
    assert translation_metrics(["Xin chào các bạn ."], ["Xin chào các bạn ."])["bleu"] == pytest.approx(100)
    # 4 of 5 unigrams, 3/4 bigrams, 2/3 trigrams, 1/2 4-grams match; same length so BP = 1.
    m = translation_metrics(["a b c d x"], ["a b c d e"])
    expected = 100 * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert m["bleu"] == pytest.approx(expected, rel=1e-6)
    assert m["bleu_brevity_penalty"] == pytest.approx(1.0)


def test_several_references():
    m = translation_metrics(["Xin chào"], [["Chào bạn", "Xin chào"]])
    assert m["bleu"] == pytest.approx(sacrebleu.corpus_bleu(["Xin chào"], [["Chào bạn"], ["Xin chào"]]).score)
    assert "nrefs:2" in m["bleu_signature"]
