"""The forgetting ledger's arithmetic against matrices worked out by hand."""

from __future__ import annotations

import pytest

from tuneforge.continual.ledger import Ledger

# three stages (a, b, c) and one probe (p); row 0 is the base model
ROWS = [
    [0.50, 0.30, 0.20, 0.60],
    [0.90, 0.35, 0.25, 0.55],
    [0.70, 0.80, 0.30, 0.50],
    [0.60, 0.70, 0.85, 0.45],
]


def ledger(rows=ROWS, lower=None) -> Ledger:
    book = Ledger(["a", "b", "c", "p"], stages=3, lower_is_better=lower or {})
    for row in rows:
        book.add_row(dict(zip(book.tasks, row, strict=True)))
    return book


def test_summary_numbers_match_the_hand_computed_ones():
    s = ledger().summary()
    assert s["average_final"] == pytest.approx((0.60 + 0.70 + 0.85) / 3)
    # BWT: a 0.60-0.90, b 0.70-0.80 -> mean(-0.30, -0.10)
    assert s["bwt"] == pytest.approx(-0.20)
    # forgetting: a best 0.90 -> 0.60 = 0.30; b best 0.80 -> 0.70 = 0.10; c best 0.30 -> 0.85: -0.55 (it improved)
    assert s["forgetting"] == pytest.approx({"a": 0.30, "b": 0.10, "c": -0.55})
    # FWT: b: R[1][b] - R[0][b] = 0.05; c: R[2][c] - R[0][c] = 0.10 -> 0.075
    assert s["fwt"] == pytest.approx(0.075)
    assert s["probes"]["p"]["change"] == pytest.approx(-0.15)


def test_a_lower_is_better_metric_is_signed_so_positive_is_better():
    # perplexity on 'a': 10 -> 5 (learned) -> 8 -> 9: forgetting 4 points of perplexity, BWT counts it as a loss
    rows = [[10, 0.3, 0.2, 0.6], [5, 0.35, 0.25, 0.55], [8, 0.8, 0.3, 0.5], [9, 0.7, 0.85, 0.45]]
    s = ledger(rows, {"a": True}).summary()
    assert s["forgetting"]["a"] == pytest.approx(4.0)
    assert s["bwt"] == pytest.approx(((5 - 9) + (0.7 - 0.8)) / 2)
    assert s["average_final"] == pytest.approx((0.7 + 0.85) / 2)  # the perplexity does not average with accuracies


def test_a_partial_ledger_summarises_the_stages_done_and_round_trips():
    book = ledger(ROWS[:2])
    s = book.summary()
    assert s["stages_done"] == 1 and s["bwt"] is None and s["fwt"] == pytest.approx(0.05)
    assert s["forgetting"] == pytest.approx({"a": -0.40})  # best before (0.50) minus final (0.90)
    again = Ledger.from_json(book.to_json())
    assert again.rows == book.rows and again.summary() == s and not again.complete
    assert ledger().complete


def test_a_row_missing_a_task_is_refused():
    book = Ledger(["a", "b"], stages=2)
    with pytest.raises(ValueError, match="lacks"):
        book.add_row({"a": 1.0})
