"""A PEFT LoRA written as a llama.cpp GGUF LoRA adapter: on a tiny random Llama, base F32 GGUF + adapter.gguf through
llama.cpp gives the logits of the merged F32 GGUF and of the PEFT model in PyTorch; what llama.cpp cannot hold is
refused with the adapter folder and the module named."""

from __future__ import annotations

import importlib.util

import gguf
import numpy as np
import pytest
import torch
from test_gguf_tiny import tiny_chat_model

from tuneforge.compress.quant.gguf_lora import write_gguf_lora
from tuneforge.compress.quant.gguf_writer import write_gguf
from tuneforge.errors import UserError

needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="needs llama-cpp-python (tuneforge[llamacpp])")
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT = [{"role": "user", "content": "What is the capital of France? Trả lời bằng tiếng Việt."}]


def peft_on_tiny(folder, seed: int = 3, **lora):
    """(PEFT model, tokenizer, base config): a random LoRA with non-zero B on the tiny model, saved to `folder`."""
    from peft import LoraConfig, get_peft_model

    model, tok = tiny_chat_model(seed=seed)
    peft = get_peft_model(model, LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ALL_LINEAR, **lora}))
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    peft.save_pretrained(folder)
    return peft.eval(), tok, model.config


def prompt_ids(tok) -> list[int]:
    return list(tok(tok.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True),
                    add_special_tokens=False)["input_ids"])


def llama_logits(path, ids, lora_path=None) -> np.ndarray:
    """Logits at every prompt position through llama.cpp, with an F32 KV cache (its default F16 cache alone moves
    them by ~1e-3)."""
    import llama_cpp

    f32 = llama_cpp.GGML_TYPE_F32
    llm = llama_cpp.Llama(model_path=str(path), lora_path=str(lora_path) if lora_path else None, n_ctx=256,
                          n_threads=1, logits_all=True, type_k=f32, type_v=f32, verbose=False)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def torch_logits(model, ids) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.fixture(scope="module")
def tiny_f32(tmp_path_factory):
    """Base F32 GGUF, adapter.gguf and merged F32 GGUF of a LoRA on every linear layer (q/k rows permuted)."""
    root = tmp_path_factory.mktemp("lora")
    peft, tok, config = peft_on_tiny(root / "adapter")
    ids = prompt_ids(tok)
    peft_logits = torch_logits(peft, ids)
    lora = write_gguf_lora(root / "adapter", config, root / "adapter.gguf")
    merged = peft.merge_and_unload()
    write_gguf(merged, tok, root / "merged.gguf", "f32")
    base, _ = tiny_chat_model(seed=3)
    write_gguf(base, tok, root / "base.gguf", "f32")
    return {"root": root, "tok": tok, "ids": ids, "peft_logits": peft_logits, "lora": lora, "config": config}


def test_adapter_file_has_llama_cpp_keys_names_and_shapes(tiny_f32):
    reader = gguf.GGUFReader(tiny_f32["root"] / "adapter.gguf")
    fields = {k: reader.fields[k].contents() for k in ("general.type", "general.architecture", "adapter.type",
                                                        "adapter.lora.alpha")}
    assert fields == {"general.type": "adapter", "general.architecture": "llama", "adapter.type": "lora",
                      "adapter.lora.alpha": 8.0}
    tensors = {t.name: t for t in reader.tensors}
    config = tiny_f32["config"]
    assert len(tensors) == 2 * len(ALL_LINEAR) * config.num_hidden_layers
    q_a, q_b = tensors["blk.0.attn_q.weight.lora_a"], tensors["blk.0.attn_q.weight.lora_b"]
    assert q_a.tensor_type == q_b.tensor_type == gguf.GGMLQuantizationType.F32
    # ggml order (ne0 first): lora_a [in, rank], lora_b [rank, out], as llama_adapter_lora_init checks them
    assert list(q_a.shape) == [config.hidden_size, 4] and list(q_b.shape) == [4, config.hidden_size]
    assert list(tensors["blk.1.ffn_down.weight.lora_a"].shape) == [config.intermediate_size, 4]
    assert tiny_f32["lora"].ranks == [4] and not tiny_f32["lora"].folded


@needs_llama_cpp
def test_base_plus_adapter_gives_the_logits_of_the_merged_gguf_and_of_peft(tiny_f32):
    root, ids = tiny_f32["root"], tiny_f32["ids"]
    with_adapter = llama_logits(root / "base.gguf", ids, root / "adapter.gguf")
    merged = llama_logits(root / "merged.gguf", ids)
    base = llama_logits(root / "base.gguf", ids)
    assert np.abs(base - merged).max() > 0.5  # the adapter really changes the answers
    np.testing.assert_allclose(with_adapter, merged, atol=1e-4, rtol=0)  # measured 3e-6
    np.testing.assert_allclose(with_adapter, tiny_f32["peft_logits"], atol=1e-4, rtol=0)  # measured 3e-6


@needs_llama_cpp
def test_greedy_answers_through_the_runner_are_those_of_the_merged_gguf(tiny_f32):
    from tuneforge.compress.quant.llamacpp import LlamaCppRunner
    from tuneforge.export.parity import GOLDEN_PROMPTS, run_parity

    root = tiny_f32["root"]
    result = run_parity(LlamaCppRunner(root / "merged.gguf", n_ctx=256, n_threads=1),
                        LlamaCppRunner(root / "base.gguf", n_ctx=256, n_threads=1, lora_path=root / "adapter.gguf"),
                        GOLDEN_PROMPTS[:3], max_new_tokens=16)
    assert result.problems == [] and result.exact_match_rate == 1.0, result.markdown()


@needs_llama_cpp
def test_rslora_alpha_and_rank_patterns_fold_into_lora_b(tmp_path):
    """One alpha in the file, llama.cpp dividing by each rank: PEFT's other scales are multiplied into lora_b."""
    peft, tok, config = peft_on_tiny(tmp_path / "adapter", seed=5, use_rslora=True, rank_pattern={"down_proj": 2},
                                     alpha_pattern={"v_proj": 3})
    lora = write_gguf_lora(tmp_path / "adapter", config, tmp_path / "adapter.gguf")
    assert lora.ranks == [2, 4] and set(lora.folded) == {n for n, _, _ in lora.pairs}  # every module: sqrt(r)
    assert lora.folded["blk.0.attn_q.weight"] == pytest.approx(2.0)  # rslora: alpha/sqrt(4) = (alpha/4) * 2
    assert lora.folded["blk.0.attn_v.weight"] == pytest.approx(3 / 8 * 2)
    ids = prompt_ids(tok)
    base, _ = tiny_chat_model(seed=5)
    write_gguf(base, tok, tmp_path / "base.gguf", "f32")
    np.testing.assert_allclose(llama_logits(tmp_path / "base.gguf", ids, tmp_path / "adapter.gguf"),
                               torch_logits(peft, ids), atol=1e-4, rtol=0)


@needs_llama_cpp
def test_f16_adapter_stays_close(tiny_f32):
    root, ids = tiny_f32["root"], tiny_f32["ids"]
    write_gguf_lora(root / "adapter", tiny_f32["config"], root / "adapter-f16.gguf", adapter_type="f16")
    reader = gguf.GGUFReader(root / "adapter-f16.gguf")
    assert {t.tensor_type for t in reader.tensors} == {gguf.GGMLQuantizationType.F16}
    np.testing.assert_allclose(llama_logits(root / "base.gguf", ids, root / "adapter-f16.gguf"),
                               tiny_f32["peft_logits"], atol=2e-2, rtol=0)


@needs_llama_cpp
def test_adapter_for_another_base_is_a_user_error(tiny_f32, tmp_path):
    from tuneforge.compress.quant.llamacpp import LlamaCppRunner

    model, tok = tiny_chat_model(seed=3, hidden=32)
    write_gguf(model, tok, tmp_path / "other.gguf", "f32")
    with pytest.raises(UserError, match="could not apply the LoRA adapter"):
        LlamaCppRunner(tmp_path / "other.gguf", n_ctx=256, n_threads=1, lora_path=tiny_f32["root"] / "adapter.gguf")


@pytest.mark.parametrize("lora, module, says", [
    ({"use_dora": True}, None, "use_dora=True: DoRA"),
    ({"modules_to_save": ["lm_head"]}, None, "modules_to_save"),
    ({"target_modules": ["q_proj", "embed_tokens"]}, "model.embed_tokens", "embedding or the output head"),
    ({"target_modules": ["q_proj", "lm_head"]}, "lm_head", "embedding or the output head"),
    ({"lora_bias": True}, None, "lora_bias=True"),
    ({"trainable_token_indices": [1, 2]}, None, "trainable_token_indices"),
    ({"use_rslora": True, "lora_alpha": 0}, None, "lora_alpha is 0"),
])
def test_what_llama_cpp_cannot_hold_is_refused_naming_folder_and_module(tmp_path, lora, module, says):
    _, _, config = peft_on_tiny(tmp_path / "adapter", **lora)
    with pytest.raises(UserError, match=says) as err:
        write_gguf_lora(tmp_path / "adapter", config, tmp_path / "adapter.gguf")
    assert str(tmp_path / "adapter") in str(err.value)
    assert module is None or f"(module {module})" in str(err.value)
    assert not (tmp_path / "adapter.gguf").exists()


def test_module_without_a_gguf_name_is_refused(tmp_path):
    """An adapter for a deeper model than the base config: its last layer has no tensor in the base."""
    _, _, config = peft_on_tiny(tmp_path / "adapter")
    config.num_hidden_layers = 1
    with pytest.raises(UserError, match=r"\(module model\.layers\.1\.mlp\.down_proj\).*no tensor for it"):
        write_gguf_lora(tmp_path / "adapter", config, tmp_path / "adapter.gguf")


def test_other_peft_types_and_architectures_are_refused(tmp_path):
    from peft import IA3Config, get_peft_model

    model, _ = tiny_chat_model()
    get_peft_model(model, IA3Config(target_modules=["q_proj", "down_proj"], feedforward_modules=["down_proj"])
                   ).save_pretrained(tmp_path / "ia3")
    with pytest.raises(UserError, match="IA3 adapter, not LoRA"):
        write_gguf_lora(tmp_path / "ia3", model.config, tmp_path / "a.gguf")
    _, _, config = peft_on_tiny(tmp_path / "adapter")
    config.model_type = "gpt2"
    with pytest.raises(UserError, match="base model is 'gpt2'"):
        write_gguf_lora(tmp_path / "adapter", config, tmp_path / "a.gguf")
