"""Linear weights packed for oneDNN answer like the plain layers, LoRA adapters per row included."""

import pytest
import torch

from tuneforge.models import packed as P


def tiny_with_two_adapters(dtype):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    model = get_peft_model(LlamaForCausalLM(config), lora, adapter_name="alpha")
    model.add_adapter("beta", lora)
    return model.to(dtype).eval()


def mixed_logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids, adapter_names=["alpha", "__base__", "beta"]).logits.float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_layers_answer_like_plain_ones_with_adapters_per_row(dtype):
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN has no bf16 kernels on this CPU")
    model = tiny_with_two_adapters(dtype)
    ids = torch.randint(0, 300, (3, 20))
    plain = mixed_logits(model, ids)
    layers = [m for m in model.modules() if P.packable(m)]
    assert P.pack_linear_weights(model) == len(layers) > 14  # every projection, lm_head and the LoRA A/B layers
    assert all(isinstance(m.forward, P.partial) for m in layers)
    packed = mixed_logits(model, ids)
    assert not torch.equal(packed[0], packed[2]), "the two adapters answer differently"
    torch.testing.assert_close(packed, plain, atol=1e-4 if dtype == torch.float32 else 0, rtol=1e-4 if dtype == torch.float32 else 0)
    with torch.inference_mode():  # greedy decoding through the KV cache, as the engine runs it
        a = model.generate(input_ids=ids[:1], max_new_tokens=8, do_sample=False, adapter_names=["beta"])
    model.set_adapter("beta")
    reference = tiny_with_two_adapters(dtype)
    reference.set_adapter("beta")
    with torch.inference_mode():
        b = reference.generate(input_ids=ids[:1], max_new_tokens=8, do_sample=False)
    assert a.tolist() == b.tolist()


def test_packing_is_skipped_when_the_copies_would_not_fit(monkeypatch):
    model = tiny_with_two_adapters(torch.float32)
    monkeypatch.setattr(P, "available_memory", lambda: 1000)  # bytes: far less than twice the weights
    assert P.pack_linear_weights(model) == 0
    assert not any(isinstance(m.forward, P.partial) for m in model.modules() if P.packable(m))


def test_engine_loaded_from_a_folder_packs_its_layers(tiny_llama_dir):
    from tuneforge.serve.engines.transformers import TransformersEngine

    engine = TransformersEngine.load(str(tiny_llama_dir), {}, dtype="float32", device="cpu")
    try:
        assert any(isinstance(m.forward, P.partial) for m in engine.model.modules())
    finally:
        engine.close()


def test_available_memory_counts_reclaimable_cache_in_bytes():
    import os

    if not os.path.exists("/proc/meminfo"):
        pytest.skip("no /proc/meminfo on this system")
    free_pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert P.available_memory() >= free_pages * 0.9  # MemAvailable >= MemFree (read a moment apart), both in bytes
