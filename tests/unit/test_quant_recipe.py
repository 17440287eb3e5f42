"""`tuneforge quantize` end to end on a tiny model and a few sentiment rows; bitsandbytes refused on CPU."""

from __future__ import annotations

import json

import pytest
import torch
from test_gguf_tiny import tiny_chat_model

from tuneforge.config import validate
from tuneforge.errors import UserError
from tuneforge.recipes.quantize import QuantizeConfig, quantize

ROWS = [
    ("a gorgeous , witty , seductive movie .", 1),
    ("the plot is nothing but boilerplate clichés .", 0),
    ("phim này thật tuyệt vời", 1),
    ("an ugly , pointless mess .", 0),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("q")
    model, tok = tiny_chat_model(seed=4)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    (root / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in ROWS), encoding="utf-8")
    return root


def config(root, method, **extra):
    return validate(QuantizeConfig, {
        "name": method, "output_dir": str(root / "runs"), "model": str(root / "base"), "method": method,
        "task": {"name": "sentiment"},
        "data": {"dev": {"path": str(root / "dev.tsv"), "text_column": "sentence", "label_column": "label"}},
        "speed": {"prompt_tokens": 16, "new_tokens": 4, "repeats": 1}, **extra,
    })


def test_int8_weight_only_run_folder(setup):
    run = quantize(config(setup, "int8_weight_only"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["rows"] == len(ROWS)
    assert set(metrics["before"]) >= {"accuracy"} and set(metrics["after"]) >= {"accuracy"}
    assert metrics["delta"] == pytest.approx(metrics["after"]["accuracy"] - metrics["before"]["accuracy"])
    assert metrics["size_after_bytes"] < metrics["size_before_bytes"]
    assert metrics["speed_after"]["decode_tok_s"] > 0
    assert (run / "model" / "config.json").exists() and (run / "report.md").exists()
    assert len((run / "predictions.jsonl").read_text().splitlines()) == len(ROWS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message")
@pytest.mark.parametrize("method", ["bnb_8bit", "bnb_nf4"])
def test_bitsandbytes_needs_a_gpu(setup, method):
    with pytest.raises(UserError, match=f"{method} needs a CUDA GPU.*int8_weight_only"):
        quantize(config(setup, method))
    assert not (setup / "runs" / method).exists()  # refused before any work


def test_unknown_method_is_a_config_error(setup):
    with pytest.raises(UserError, match="method"):
        config(setup, "int4_awq")
    with pytest.raises(UserError, match="zero-shot"):
        config(setup, "gguf_q8_0", eval={"strategy": "few_shot"})
