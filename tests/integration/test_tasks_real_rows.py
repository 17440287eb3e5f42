"""Each task pack on a few real rows with the embedded model: read → prepare → prompt → generate → parse → score.

Rows come from ../shared/data (train/dev files only, never hold-out); generation is short so each test
stays well under a minute on two CPU cores.
"""

import math
from pathlib import Path

import pytest

from tuneforge.config.data import DataSpec
from tuneforge.data.readers import read_rows
from tuneforge.tasks import get_task

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def need(path: Path) -> str:
    if not path.exists():
        pytest.skip(f"real data not found at {path}")
    return str(path)


@pytest.fixture(scope="module")
def model_tok():
    from tuneforge.models import load_model

    try:
        return load_model(None)
    except Exception as e:
        pytest.skip(f"embedded model not available: {e}")


def run(task, rows, model_tok, strategy="zero_shot", shots=(), max_new_tokens=None):
    from tuneforge.scoring import score_task

    model, tok = model_tok
    rows = task.truncate(rows, tok) if hasattr(task, "truncate") else rows
    return score_task(model, tok, task, rows, strategy=strategy, shots=shots, batch_size=4,
                      max_new_tokens=max_new_tokens)


def test_translation_en_vi_and_vi_en(model_tok):
    path = need(DATA / "translation/iwslt15_en_vi/tst2012.en-vi.tsv")
    for direction in ("en-vi", "vi-en"):
        task = get_task("translation", direction=direction)
        rows = task.prepare(read_rows(DataSpec(path=path, start=1, limit=3)), path)
        metrics, preds = run(task, rows, model_tok, max_new_tokens=24)
        assert 0 <= metrics["bleu"] <= 100 and 0 < metrics["chrf"] <= 100
        assert "tok:13a" in metrics["bleu_signature"] and metrics["n"] == 3
        assert all(isinstance(p["output"], str) for p in preds)
    # The vi-en sources went through reading and prompting with their diacritics intact.
    assert any(ch in "ăâđêôơưạếộ" for ch in rows[0]["source"].lower())


def test_summarization_dialogsum_three_references(model_tok):
    path = need(DATA / "summarization/dialogsum/dialogsum.test.jsonl")
    task = get_task("summarization", max_source_tokens=256)
    rows = task.prepare(read_rows(DataSpec(path=path, limit=2)), path)
    assert all(len(r["references"]) == 3 for r in rows)
    metrics, preds = run(task, rows, model_tok, max_new_tokens=32)
    assert metrics["rouge1"] > 0 and metrics["n"] == 2
    assert preds[0]["reference"] == rows[0]["references"]


def test_summarization_vietnews_is_vietnamese_end_to_end(model_tok):
    path = need(DATA / "summarization/vietnews/val.first300.jsonl")
    task = get_task("summarization", instruction="Tóm tắt bài báo sau trong một câu.", max_source_tokens=200)
    rows = task.prepare(read_rows(DataSpec(path=path, limit=2)), path)
    assert "_" not in rows[0]["references"][0]
    _, tok = model_tok
    cut = task.truncate(rows, tok)
    assert all(r["truncated"] for r in cut)  # VietNews articles are far longer than 200 tokens
    # A copy of the article's lead scores non-zero ROUGE against the abstract: Vietnamese words are kept.
    lead = [r["source"].split(" . ")[0] for r in rows]
    assert task.score(lead, [task.reference(r) for r in rows])["rouge1"] > 10
    metrics, preds = run(task, cut[:1], model_tok, max_new_tokens=24)
    assert preds[0]["output"] and metrics["n"] == 1


def test_qa_squad_zero_shot_and_cot(model_tok):
    path = need(DATA / "qa/squad_v1.1/dev-v1.1.json")
    task = get_task("qa")
    rows = task.prepare(task.read(DataSpec(path=path, start=38, limit=1)), path)[:4]
    assert {r["article"] for r in rows} == {38}
    metrics, preds = run(task, rows, model_tok)
    assert metrics["n"] == 4 and metrics["f1"] > 0  # the embedded model copies some spans right
    cot, _ = run(task, rows[:2], model_tok, strategy="cot", max_new_tokens=48)
    assert 0 <= cot["f1"] <= 100


def test_chat_loss_on_the_mix_and_an_mt_bench_answer(model_tok):
    from tuneforge.tasks.chat import answer_questions

    need(DATA / "chat/lima/lima.json")
    task = get_task("chat", questions=need(DATA / "chat/mt_bench/question.jsonl"), max_len=512)
    spec = DataSpec(path=str(DATA / "chat"), files={"alpaca": "alpaca_en_demo/alpaca_en_demo.json",
                                                     "lima": "lima/lima.json"}, limit=4)
    rows = task.prepare(task.read(spec), spec.path)
    model, tok = model_tok
    metrics, preds = task.loss_metrics(model, tok, rows, batch_size=2)
    # An instruction-tuned model is far better than uniform over 49k tokens (ppl 49152).
    assert math.isfinite(metrics["loss"]) and 1 < metrics["perplexity"] < 100
    assert metrics["assistant_tokens"] == sum(p["tokens"] for p in preds) > 0
    answers = answer_questions(model, tok, task, batch_size=1, max_new_tokens=16, limit=1)
    assert answers[0]["question_id"] == 81 and answers[0]["answer"]
