"""K-quant GGUF through llama.cpp's quantizer, and the importance matrix (imatrix) taken in PyTorch."""

from __future__ import annotations

import importlib.util

import gguf
import numpy as np
import pytest
import torch
from test_gguf_tiny import tiny_chat_model
from test_gguf_writer import expected_tensors

from tuneforge.compress.quant.llamacpp_quantize import (
    activation_importance,
    k_quant_fallback_note,
    llamacpp_quantize,
    matrix_types,
    write_any_gguf,
)
from tuneforge.errors import UserError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python")


def dequantized(path) -> dict[str, np.ndarray]:
    reader = gguf.GGUFReader(str(path))
    return {t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape(t.data.shape[0], -1)
            for t in reader.tensors if t.tensor_type not in (gguf.GGMLQuantizationType.F32,)}


def test_q4_k_m_holds_k_quants_close_to_the_weights_and_runs_in_llamacpp(tmp_path):
    from tuneforge.compress.quant.llamacpp import LlamaCppRunner

    model, tok = tiny_chat_model(seed=3, hidden=256)  # rows of 256: one K-quant block each
    path = write_any_gguf(model, tok, tmp_path / "tiny-q4_k_m.gguf", "q4_k_m", pre_tokenizer=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-q4_k_m.gguf"]  # the F32 intermediate is gone
    types = matrix_types(path)
    assert types.get("Q4_K", 0) > 0 and set(types) <= {"Q4_K", "Q5_K", "Q6_K", "Q8_0"}, types
    want = expected_tensors(model)
    for name, back in dequantized(path).items():
        ref = want[name]
        rel = np.linalg.norm(back.reshape(ref.shape) - ref) / np.linalg.norm(ref)
        assert 0 < rel < 0.12, f"{name}: relative error {rel:.3f}"  # 4-6 bits: a few percent, never exact
    runner = LlamaCppRunner(path, n_ctx=128, n_threads=1)
    ids = runner.prompt_ids([{"role": "user", "content": "Xin chào"}])
    assert len(runner.greedy(ids, 6)) == 6


def test_k_quant_fallback_is_explained_for_narrow_rows():
    narrow, _ = tiny_chat_model(hidden=64)
    wide, _ = tiny_chat_model(hidden=256)
    note = k_quant_fallback_note(narrow, "q4_k_m")
    assert note and "rows of 64" in note and "14 of 14 block weight matrices" in note  # 2 blocks x 7 linears
    assert k_quant_fallback_note(wide, "q4_k_m") is None
    assert k_quant_fallback_note(narrow, "q8_0") is None


def padded_batch(tok, texts):
    enc = tok(texts, return_tensors="pt", padding=True)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def test_importance_is_the_mean_square_of_real_token_inputs():
    model, tok = tiny_chat_model(seed=5)
    batch = padded_batch(tok, ["Thủ đô của Việt Nam là Hà Nội.", "a"])
    imp = activation_importance(model, [batch])
    assert len(imp) == 2 * 7 and all(v.dtype == np.float32 for v in imp.values())
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        normed = model.model.layers[0].input_layernorm(model.model.embed_tokens(batch["input_ids"]))
    want = (normed[mask].double() ** 2).mean(0).numpy()
    np.testing.assert_allclose(imp["blk.0.attn_q.weight"], want, rtol=1e-5)
    np.testing.assert_array_equal(imp["blk.0.attn_k.weight"], imp["blk.0.attn_q.weight"])  # same input
    assert imp["blk.1.ffn_down.weight"].shape == (model.config.intermediate_size,)
    # padding does not count, deep in the model too: one padded batch of both rows gives what the two rows give
    # in batches of their own (no padding), token for token
    texts = ["Thủ đô của Việt Nam là Hà Nội.", "a"]
    apart = activation_importance(model, [padded_batch(tok, [t]) for t in texts])
    for name in ("blk.1.attn_output.weight", "blk.1.ffn_down.weight"):
        np.testing.assert_allclose(imp[name], apart[name], rtol=1e-4)


def test_importance_moves_the_quantization_error_off_the_important_features(tmp_path):
    """Q4_0 weighted by an imatrix that favours 8 input features errs less on them than unweighted Q4_0."""
    model, tok = tiny_chat_model(seed=6)
    want = expected_tensors(model)
    names = [n for n in want if n.startswith("blk.") and want[n].ndim == 2]
    importance = {}
    for n in names:
        values = np.full(want[n].shape[1], 1e-3, dtype=np.float32)
        values[::8] = 1e3
        importance[n] = values
    plain = dequantized(write_any_gguf(model, tok, tmp_path / "plain.gguf", "q4_0", pre_tokenizer=None, importance=None))
    weighted = dequantized(write_any_gguf(model, tok, tmp_path / "w.gguf", "q4_0", pre_tokenizer=None, importance=importance))

    def weighted_error(files):
        return sum(float((importance[n] * (files[n].reshape(want[n].shape) - want[n]) ** 2).sum()) for n in names)

    assert weighted_error(weighted) < 0.7 * weighted_error(plain)


def test_a_file_llamacpp_cannot_read_is_one_error_and_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    target = tmp_path / "out" / "model-q4_k_m.gguf"
    with pytest.raises(UserError, match="could not quantize"):
        llamacpp_quantize(bad, target, "q4_k_m")
    assert list(target.parent.iterdir()) == []


def test_ctrl_c_during_llamacpps_quantizer_stops_the_run_and_leaves_nothing(tmp_path, monkeypatch):
    import ctypes
    import os
    import signal

    import llama_cpp

    def quantize_while_the_user_presses_ctrl_c(source, target, params):
        with open(target, "wb") as f:
            f.write(b"GGUF written")
        os.kill(os.getpid(), signal.SIGINT)
        return 0

    # Called through a C function pointer, as llama.cpp calls tuneforge's log callback: a KeyboardInterrupt
    # raised in there is printed and dropped by ctypes, and the call returns 0 as if all went well.
    proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p)
    callback = proto(quantize_while_the_user_presses_ctrl_c)
    through_c = proto(ctypes.cast(callback, ctypes.c_void_p).value)
    monkeypatch.setattr(llama_cpp, "llama_model_quantize", lambda source, target, params: through_c(source, target, None))
    source = tmp_path / "model-f32.gguf"
    source.write_bytes(b"GGUF")
    target = tmp_path / "out" / "model-q4_k_m.gguf"
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        llamacpp_quantize(source, target, "q4_k_m")
    assert list(target.parent.iterdir()) == []  # neither the target nor its temporary file
    assert signal.getsignal(signal.SIGINT) is handler
