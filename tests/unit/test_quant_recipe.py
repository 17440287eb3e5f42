"""`tuneforge quantize` end to end on a tiny model and a few sentiment rows, torchao and bitsandbytes (CPU)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
from test_gguf_tiny import tiny_chat_model

from tuneforge.compress.quant.torchao import load_quantized
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


needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes (tuneforge[bnb])")


@needs_bnb
@pytest.mark.parametrize("method, layer", [("bnb_nf4", "Linear4bit"), ("bnb_8bit", "Linear8bitLt")])
def test_bitsandbytes_run_folder_reloads_quantized_layers(setup, method, layer):
    run = quantize(config(setup, method))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["size_after_bytes"] < metrics["size_before_bytes"]
    assert set(metrics["after"]) >= {"accuracy"} and metrics["speed_after"]["decode_tok_s"] > 0
    reloaded = load_quantized(run / "model")  # what a user loads: bitsandbytes layers, from config.json alone
    kinds = {type(m).__name__ for m in reloaded.modules()}
    assert layer in kinds and "Linear" not in {type(m).__name__ for m in reloaded.model.layers.modules()}


@needs_bnb
@pytest.mark.parametrize("method", ["bnb_8bit", "bnb_nf4"])
def test_bitsandbytes_without_kernels_here_is_refused_before_any_work(setup, method, monkeypatch):
    from tuneforge.models import bnb

    if torch.cuda.is_available():
        pytest.skip("checks the CPU refusal")
    monkeypatch.setattr(bnb, "cpu_probe", lambda m: "RuntimeError: no CPU kernel")  # an old bitsandbytes build
    with pytest.raises(UserError, match=f"{method} needs a CUDA GPU, or a bitsandbytes whose CPU backend runs it.*no CPU kernel.*int8_weight_only"):
        quantize(config(setup, method, name=f"refused-{method}"))
    assert not (setup / "runs" / f"refused-{method}").exists()


def test_bitsandbytes_missing_is_one_install_line(setup, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(UserError, match=r"bnb_nf4 needs bitsandbytes >= 0.48: `pip install 'tuneforge\[bnb\]'`"):
        quantize(config(setup, "bnb_nf4"))


@needs_bnb
def test_a_bitsandbytes_too_old_for_transformers_is_refused(setup, monkeypatch):
    import bitsandbytes

    monkeypatch.setattr(bitsandbytes, "__version__", "0.46.0")  # CPU kernels, but transformers cannot .to() its 8-bit
    with pytest.raises(UserError, match="bnb_8bit needs bitsandbytes >= 0.48; 0.46.0 is installed"):
        quantize(config(setup, "bnb_8bit", name="too-old"))
    assert not (setup / "runs" / "too-old").exists()


@needs_bnb
@pytest.mark.parametrize("method", ["bnb_8bit", "bnb_nf4"])
def test_cpu_probe_runs_a_real_bitsandbytes_layer(method):
    from tuneforge.models.bnb import cpu_probe

    assert cpu_probe(method) is None  # the bnb extra's floor (0.48) has CPU kernels


def test_unknown_method_is_a_config_error(setup):
    with pytest.raises(UserError, match="method"):
        config(setup, "int4_awq")
    with pytest.raises(UserError, match="zero-shot"):
        config(setup, "gguf_q8_0", eval={"strategy": "few_shot"})


@needs_bnb
def test_an_nf4_run_folder_serves_like_the_model_it_reloads_to(setup):
    """`tuneforge serve runs/<name>/model`: the transformers engine answers as the reloaded NF4 model generates."""
    import asyncio

    from tuneforge.serve.engines.base import GenerationRequest, Sampling
    from tuneforge.serve.engines.transformers import TransformersEngine

    run = quantize(config(setup, "bnb_nf4", name="serve-nf4"))
    engine = TransformersEngine.load(str(run / "model"), {})
    try:
        ids = engine.encode_chat([{"role": "user", "content": "Xin chào, bạn khỏe không?"}])
        with torch.inference_mode():
            out = engine.model.generate(input_ids=torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                        eos_token_id=sorted(engine.scheduler.end_ids), pad_token_id=engine.scheduler.pad_id)
        expected = engine.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)

        async def answer():
            return [c async for c in engine.stream(GenerationRequest(ids, None, Sampling(max_tokens=8, temperature=0)))]

        assert type(engine.model.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
        chunks = asyncio.run(answer())
        assert chunks[-1].completion_tokens == out.shape[1] - len(ids)
        # a random model emits byte tokens; the stream holds back a trailing incomplete UTF-8 character
        assert "".join(c.text for c in chunks) == expected.rstrip("\ufffd")
    finally:
        engine.close()


@needs_bnb
def test_nf4_layers_of_any_width_run_inference(tiny_llama_dir):
    """32 wide: too narrow for bitsandbytes' packed CPU kernel (on AVX512-BF16 CPUs), so they keep the plain one."""
    from tuneforge.models import load_model

    model, tok = load_model(str(tiny_llama_dir), dtype="float32", quantization="bnb_nf4")
    unfit = [m for m in model.modules() if type(m).__name__ == "Linear4bit" and (m.in_features % 64 or m.out_features % 32)]
    assert unfit and not any(m.support_avx512bf16_for_cpu for m in unfit)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert torch.isfinite(logits).all()


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python")
def test_k_quant_run_weighted_by_an_imatrix_scores_through_llamacpp(setup):
    split = {"path": str(setup / "dev.tsv"), "text_column": "sentence", "label_column": "label"}
    run = quantize(config(setup, "gguf_q4_k_m", gguf={"imatrix_rows": 3, "n_ctx": 256, "threads": 1},
                          parity={"max_new_tokens": 4}, data={"train": split, "dev": split}))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["imatrix_rows"] == 3 and sum(metrics["gguf_types"].values()) == 2 * 7 + 1  # + the tied embedding
    assert "rows of 64" in metrics["gguf_note"]  # the tiny model's rows are too narrow for K-quant blocks
    assert set(metrics["after"]) >= {"accuracy"} and metrics["parity"]["prompts"] > 0
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".gguf") == ["model-q4_k_m.gguf"]
    assert "matrices by GGUF type" in (run / "report.md").read_text()


def test_imatrix_rows_need_training_rows(setup):
    with pytest.raises(UserError, match="imatrix_rows needs data.train"):
        config(setup, "gguf_q4_0", gguf={"imatrix_rows": 8})
    with pytest.raises(UserError, match="not method int8_weight_only"):
        config(setup, "int8_weight_only", gguf={"imatrix_rows": 8})


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python")
def test_gguf_run_also_answers_with_the_files_own_weights_in_pytorch(setup):
    run = quantize(config(setup, "gguf_f16", gguf={"n_ctx": 256, "threads": 1}, parity={"max_new_tokens": 6}))
    metrics = json.loads((run / "metrics.json").read_text())
    file_parity = json.loads((run / "parity.json").read_text())["file_weights"]
    assert file_parity == metrics["parity_file_weights"] and file_parity["prompts"] == 5
    assert file_parity["exact_match_rate"] == 1.0  # F16 weights hold the float model's answers on a tiny model
    assert "the file's weights in PyTorch" in (run / "report.md").read_text()


@pytest.mark.parametrize("method", ["gguf_q4_k_m", "gguf_f16"])
def test_gguf_without_llama_cpp_is_refused_before_any_work(setup, method, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **kw: None if name == "llama_cpp" else real(name, *a, **kw))
    with pytest.raises(UserError, match=rf"method {method} needs llama-cpp-python: pip install 'tuneforge\[llamacpp\]'"):
        quantize(config(setup, method, name=f"no-llama-{method}", parity={"enabled": False}, speed={"enabled": False}))
    assert not (setup / "runs" / f"no-llama-{method}").exists()  # nothing loaded, no run folder
