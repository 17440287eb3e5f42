"""The embedded model written to GGUF loads in llama.cpp and answers the golden prompts token for token.

F16 is written once per session (module fixture); the PyTorch answers are computed once and shared (CachedRunner).
"""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python (tuneforge[llamacpp])"),
]

# Keys that describe the upstream release rather than the model (name, licence, ...) or the tensor type.
DESCRIPTIVE = {"general.name", "general.organization", "general.finetune", "general.basename", "general.size_label",
               "general.license", "general.languages", "general.file_type"}
MAX_NEW = 24


@pytest.fixture(scope="module")
def source():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.export.parity import CachedRunner, HFRunner
    from tuneforge.models import resolve_model

    folder = resolve_model(None)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return CachedRunner(HFRunner(model, AutoTokenizer.from_pretrained(folder))), folder


@pytest.fixture(scope="module")
def f16_path(source, tmp_path_factory):
    from tuneforge.compress.quant.gguf_writer import pre_tokenizer_from_source, write_gguf

    runner, folder = source
    path = tmp_path_factory.mktemp("gguf") / "smollm2-f16.gguf"
    return write_gguf(runner.model, runner.tok, path, "f16", pre_tokenizer=pre_tokenizer_from_source(folder))


def parity_of(source, path):
    from tuneforge.compress.quant.llamacpp import LlamaCppRunner
    from tuneforge.export.parity import run_parity

    return run_parity(source[0], LlamaCppRunner(path, n_ctx=512), max_new_tokens=MAX_NEW)


def test_f16_metadata_matches_the_original_gguf(f16_path):
    import gguf

    from tuneforge.models.known import KNOWN_MODELS, package_folder

    known = KNOWN_MODELS["smollm2-135m-instruct"]
    ref = gguf.GGUFReader(package_folder(known) / known.gguf_file)
    ours = gguf.GGUFReader(f16_path)
    missing = [k for k in ref.fields if not k.startswith("GGUF.") and k not in DESCRIPTIVE and k not in ours.fields]
    assert not missing
    for key in ref.fields:
        if key.startswith("GGUF.") or key in DESCRIPTIVE:
            continue
        assert ours.fields[key].contents() == ref.fields[key].contents(), key
    assert {t.name for t in ours.tensors} == {t.name for t in ref.tensors}  # tied: no output.weight in either


def test_f16_same_greedy_tokens_as_pytorch(source, f16_path):
    result = parity_of(source, f16_path)
    print("F16", result.summary())
    assert result.problems == []
    assert result.prompt_match_rate == 1.0  # GGUF's template + llama.cpp's tokenizer == HF's
    assert result.exact_match_rate == 1.0, result.markdown()
    assert "Paris" in result.rows[0]["export_text"]


@pytest.fixture(scope="module")
def q8_0_path(source, tmp_path_factory):
    from tuneforge.compress.quant.gguf_writer import pre_tokenizer_from_source, write_gguf

    runner, folder = source
    path = tmp_path_factory.mktemp("gguf") / "q8_0.gguf"
    return write_gguf(runner.model, runner.tok, path, "q8_0", pre_tokenizer=pre_tokenizer_from_source(folder))


@pytest.fixture(scope="module")
def q8_0_parity(source, q8_0_path):
    result = parity_of(source, q8_0_path)
    print("Q8_0", result.summary())
    return result


def test_q8_0_files_own_weights_answer_like_pytorch(source, q8_0_path):
    """The Q8_0 file holds the model faithfully: its weights, read back and dequantized by transformers' own GGUF
    reader and run in PyTorch, answer every golden prompt token for token like the float model. Where llama.cpp
    parts from them (below), it is llama.cpp's arithmetic (8-bit activations in Q8_0 matmuls), not the file."""
    from tuneforge.export.parity import gguf_weights_runner, run_parity

    result = run_parity(source[0], gguf_weights_runner(q8_0_path, source[0].tok), max_new_tokens=MAX_NEW)
    print("Q8_0 weights in PyTorch", result.summary())
    assert result.exact_match_rate == 1.0, result.markdown()


def test_q8_0_answers_most_golden_prompts_like_pytorch(q8_0_parity):
    """A guard under the exact-match goal below: measured 3 of 5 identical here (token agreement 0.78), 4 of 5 in
    other sessions; a broken export (rotary order, tokenizer, template) agrees on next to nothing."""
    assert q8_0_parity.problems == [] and q8_0_parity.prompt_match_rate == 1.0
    assert q8_0_parity.exact_match_rate >= 0.4 and q8_0_parity.token_agreement >= 0.5, q8_0_parity.markdown()


@pytest.mark.xfail(reason="known gap: Q8_0 through llama.cpp answers 3-4 of 5 golden prompts token for token, "
                   "parting where PyTorch's own top two logits differ by 0.08-0.2; F16 agrees on all 5, and so do the "
                   "Q8_0 file's own weights in PyTorch (test above): llama.cpp's 8-bit activations part them", strict=False)
def test_q8_0_same_greedy_tokens_as_pytorch(q8_0_parity):
    assert q8_0_parity.exact_match_rate == 1.0, q8_0_parity.markdown()


@pytest.mark.slow
def test_q4_0_match_rate_is_reported(source, tmp_path):
    from tuneforge.compress.quant.gguf_writer import write_gguf

    runner, _ = source
    result = parity_of(source, write_gguf(runner.model, runner.tok, tmp_path / "q4_0.gguf", "q4_0"))
    print("Q4_0", result.summary())
    assert result.problems == [] and result.token_agreement > 0.2
