"""The lean decode step answers like transformers' forward: same logits, same cache, adapters per row included."""

import shutil

import pytest
import torch

from tuneforge.generation import cache_kwarg
from tuneforge.models.adapters import base_model
from tuneforge.models.packed import pack_linear_weights
from tuneforge.serve.engines.kv_room import roomy_cache
from tuneforge.serve.engines.lean_decode import lean_decoder

SIZES = dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=128, max_position_embeddings=256)


def tiny(kind: str):
    import transformers

    torch.manual_seed(0)
    config_class, model_class = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
                                 "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
                                 "llama-mha": ("LlamaConfig", "LlamaForCausalLM")}[kind]
    sizes = dict(SIZES, num_key_value_heads=4) if kind == "llama-mha" else SIZES
    config = getattr(transformers, config_class)(**sizes)
    return getattr(transformers, model_class)(config).eval()


def with_two_adapters(model, targets=("q_proj", "v_proj", "down_proj")):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False)
    model = get_peft_model(model, lora, adapter_name="alpha")
    model.add_adapter("beta", lora)
    return model.eval()


def decode_both_ways(model, steps=6, adapter_names=None, lean=None, rows=3):
    """Prefill a left-padded batch once per arm, then decode greedily with transformers and with the lean step."""
    lean = lean or lean_decoder(model)
    assert lean is not None
    arg = cache_kwarg(base_model(model))
    torch.manual_seed(1)
    ids = torch.randint(0, 300, (rows, 12))
    start_mask = torch.ones_like(ids)
    start_mask[0, :5] = 0 if rows > 1 else 1  # a shorter prompt
    extra = {"adapter_names": adapter_names} if adapter_names else {}
    runs = []
    for use_lean in (False, True):
        mask, cache, logits_seen = start_mask, roomy_cache(model.config), []
        with torch.inference_mode():
            out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                        use_cache=True, logits_to_keep=1, **{arg: cache}, **extra)
            last = out.logits[:, -1].argmax(-1, keepdim=True)
            for _ in range(steps):
                positions = mask.sum(-1, keepdim=True)
                mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=1)
                if use_lean:
                    logits = lean(last, mask, positions, cache, adapter_names=adapter_names)
                else:
                    logits = model(input_ids=last, attention_mask=mask, position_ids=positions, use_cache=True,
                                   **{arg: cache}, **extra).logits[:, -1]
                logits_seen.append(logits.float())
                last = logits.argmax(-1, keepdim=True)
        runs.append(torch.stack(logits_seen))
    return runs


@pytest.mark.parametrize("kind", ["llama", "qwen2", "llama-mha"])
@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
def test_lean_step_matches_transformers_forward(kind, packed):
    model = tiny(kind)
    if packed:  # packed layers: q/k/v and gate/up become one product each
        assert pack_linear_weights(model) > 0
        assert all(fused is not None for _, _, pair in lean_decoder(model).layers for fused in pair)
    reference, lean = decode_both_ways(model)
    torch.testing.assert_close(lean, reference, atol=1e-4, rtol=1e-4)


def test_lean_step_in_bf16_picks_the_same_tokens():
    reference, lean = decode_both_ways(tiny("llama").to(torch.bfloat16), steps=8)
    assert torch.equal(lean.argmax(-1), reference.argmax(-1))
    torch.testing.assert_close(lean, reference, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
def test_lean_step_applies_each_rows_adapter(packed):
    model = with_two_adapters(tiny("llama"))
    if packed:  # LoRA on q/v keeps q/k/v separate; gate/up (no LoRA) are fused
        pack_linear_weights(model)
        assert all(qkv is None and gate_up is not None for _, _, (qkv, gate_up) in lean_decoder(model).layers)
    names = ["alpha", "__base__", "beta"]
    reference, lean = decode_both_ways(model, adapter_names=names)
    torch.testing.assert_close(lean, reference, atol=1e-5, rtol=1e-5)
    base_only, _ = decode_both_ways(model, adapter_names=["__base__"] * 3)
    assert not torch.allclose(reference[:, 0], base_only[:, 0]), "adapter alpha changes row 0"
    assert not torch.allclose(reference[:, 2], base_only[:, 2]), "adapter beta changes row 2"


def test_other_architectures_and_adapters_keep_transformers_forward():
    from transformers import GemmaConfig, GemmaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    assert lean_decoder(GemmaForCausalLM(GemmaConfig(**SIZES, head_dim=16))) is None  # (1 + w) norm, scaled embeddings
    assert lean_decoder(Qwen3ForCausalLM(Qwen3Config(**SIZES, head_dim=16))) is None  # q/k norms
    assert lean_decoder(with_two_adapters(tiny("llama"), targets=("q_proj", "lm_head"))) is None
    assert lean_decoder(with_two_adapters(tiny("qwen2"), targets=("k_proj", "o_proj", "gate_proj"))) is not None


def test_engine_loads_on_a_thread_that_ends_with_the_load():
    import threading

    from tuneforge.errors import UserError
    from tuneforge.serve.engines.transformers import on_passing_thread

    worker = on_passing_thread(threading.current_thread)
    assert worker is not threading.current_thread() and not worker.is_alive()
    with pytest.raises(UserError, match="no such model"):  # the load's errors reach the caller unchanged
        on_passing_thread(lambda: (_ for _ in ()).throw(UserError("no such model")))


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile's C++ kernels need g++, which this machine lacks")
def test_compiled_step_matches_transformers_forward_without_compiling_while_serving():
    model = tiny("qwen2")  # q/k/v biases too
    pack_linear_weights(model)
    lean = lean_decoder(model)
    with torch.inference_mode():
        lean.compile()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    # 70 steps outgrow the cache's spare columns (kv_room.ROOM): the buffers regrow mid-run
    for rows in (3, 1):
        reference, compiled = decode_both_ways(model, steps=70, lean=lean, rows=rows)
        torch.testing.assert_close(compiled, reference, atol=1e-4, rtol=1e-4)
    assert lean.eager_steps == 0, "every step ran on a graph the warm-up compiled"
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs, "no graph was compiled after warm-up"
