"""Run reports: real PNGs, markdown + self-contained HTML, escaping, Vietnamese text, number formatting."""

from __future__ import annotations

import base64
import re
import warnings

import pytest
from PIL import Image

from tuneforge.report import format_table, format_value, plot_loss, plot_metric_bars, write_report

VI = "Giảng viên dạy rất nhiệt tình — tích cực"


def history(steps: int = 120) -> list[dict]:
    rows = []
    for s in range(1, steps + 1):
        row = {"step": s, "loss": 3.0 / s**0.5, "lr": 2e-4, "tokens_per_second": 300.0}
        if s % 40 == 0:
            row.update(dev_loss=3.2 / s**0.5, dev_accuracy=0.7 + s / 1000)
        rows.append(row)
    return rows


def assert_png(path, min_size=(300, 200)):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert min_size[0] <= im.width <= 3000 and min_size[1] <= im.height <= 2000
        # not blank: a real plot has many colours
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 20


def test_plots_are_valid_pngs_and_vietnamese_needs_no_missing_glyph(tmp_path):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*[Gg]lyph.*missing")
        loss = plot_loss(history(), tmp_path / "loss.png", title=VI)
        bars = plot_metric_bars(
            {"zero-shot": {"accuracy": 0.71, "macro_f1": 0.69}, "LoRA": {"accuracy": 0.891, "macro_f1": 0.8899}},
            tmp_path / "sub" / "bars.png", title=VI,
        )
    assert loss == tmp_path / "loss.png"
    assert_png(loss)
    assert_png(bars)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bars.png", "loss.png", "sub"]  # no temp files left


def test_plots_cope_with_empty_history_and_missing_metric(tmp_path):
    assert_png(plot_loss([], tmp_path / "empty.png"), min_size=(100, 100))
    bars = plot_metric_bars({"a": {"bleu": 31.5, "chrf": 55.0}, "b": {"bleu": 12.25}}, tmp_path / "b.png")
    assert_png(bars)


def test_format_value():
    assert format_value(0.891055) == "0.8911"
    assert format_value(2e-4) == "0.0002"
    assert format_value(312.4567) == "312.5"
    assert format_value(12345.67) == "12346"
    assert format_value(7) == "7"
    assert format_value(True) == "True"
    assert format_value(None) == ""
    assert format_value([[1, 2], [3, 4]]) == "[[1, 2], [3, 4]]"


def test_format_table_aligns_and_escapes_pipes():
    text = format_table([{"arm": "zero-shot", "acc": 0.70987}, {"arm": "a|b\nc", "acc": 1}])
    lines = text.splitlines()
    assert lines[0].startswith("| arm") and "acc" in lines[0]
    assert lines[1].endswith(":|")  # numeric column right-aligned
    assert "0.7099" in lines[2] and r"a\|b c" in lines[3]
    assert len({len(line) for line in lines}) == 1
    assert format_table([]) == "(no rows)"


def make_report(tmp_path):
    run = tmp_path / "run"
    loss = plot_loss(history(), run / "plots" / "loss.png")
    rows = [
        {"arm": "zero-shot", "accuracy": 0.709862, "macro_f1": 0.69123},
        {"arm": "LoRA", "accuracy": 0.891055, "macro_f1": 0.890911},
    ]
    preds = [{"text": VI, "output": "<script>alert('x')</script> & <b>positive</b>"}]
    md, html = write_report(
        run, title=f"Báo cáo {VI}", summary=[("model", "smollm2-135m-instruct"), ("tokens/s", 312.4567)],
        tables=[("Before / after", rows), ("Predictions", preds)], images=[("Loss curve", loss)],
        notes=["a <note> with ünïcode"],
    )
    return run, md, html


def test_write_report_files_and_self_contained_html(tmp_path):
    run, md, html = make_report(tmp_path)
    assert md == run / "report.md" and html == run / "report.html"
    page = html.read_text(encoding="utf-8")
    assert '<meta charset="utf-8">' in page
    for value in ("0.7099", "0.6912", "0.8911", "0.8909", "312.5", "smollm2-135m-instruct"):
        assert value in page
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)
    assert "http://" not in page and "https://" not in page
    uri = re.search(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert uri and base64.b64decode(uri.group(1)) == (run / "plots" / "loss.png").read_bytes()
    text = md.read_text(encoding="utf-8")
    assert "![Loss curve](plots/loss.png)" in text
    assert "| 0.8911 |" in text.replace("  ", " ").replace("  ", " ")
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temp files left


def test_report_escapes_html_and_keeps_vietnamese(tmp_path):
    _, md, html = make_report(tmp_path)
    page = html.read_text(encoding="utf-8")
    assert "<script>" not in page and "<b>positive" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &lt;b&gt;positive&lt;/b&gt;" in page
    assert "a &lt;note&gt; with ünïcode" in page
    assert page.count(VI) == 3  # <title>, <h1> and the predictions table: UTF-8 text, not entities
    text = md.read_text(encoding="utf-8")
    assert VI in text and "<script>" not in text and "&lt;script&gt;" in text


def test_report_image_path_relative_to_run_dir(tmp_path):
    run = tmp_path / "run"
    plot_loss(history(10), run / "loss.png")
    md, html = write_report(run, title="t", summary=[], tables=[], images=[("loss", "loss.png")])
    assert "![loss](loss.png)" in md.read_text(encoding="utf-8")
    assert "data:image/png;base64," in html.read_text(encoding="utf-8")


def test_loss_axis_turns_logarithmic_when_losses_span_decades():
    from tuneforge.report import loss_scale

    assert loss_scale([37.5, 4.0, 0.05, 0.02]) == "log"
    assert loss_scale([2.1, 0.9, 0.4]) == "linear"
    assert loss_scale([]) == "linear" and loss_scale([0.0, 5.0]) == "linear"


@pytest.mark.parametrize("bad", [{"step": 1}, {"loss": 1.0}])
def test_plot_loss_skips_rows_without_step_or_loss(tmp_path, bad):
    assert_png(plot_loss([bad, {"step": 2, "loss": 0.5}, {"step": 3, "loss": 0.4}], tmp_path / "l.png"))
