"""RoomyLayer: the engine's KV cache written in place answers like transformers' DynamicCache."""

import torch

from tuneforge.serve.engines.kv_room import ROOM, roomy_cache


def test_roomy_cache_decodes_like_dynamic_cache_and_writes_in_place(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, DynamicCache

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    torch.manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding, as the engine batches prompts of different lengths

    def decode(cache, steps):
        m, pointers, out = mask, [], []
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=m, position_ids=(m.cumsum(-1) - 1).clamp(min=0),
                           past_key_values=cache, use_cache=True).logits[:, -1]
            for _ in range(steps):
                token = logits.argmax(-1, keepdim=True)
                out.append(token[:, 0].tolist())
                pos = m.sum(-1, keepdim=True)
                m = torch.cat([m, m.new_ones((2, 1))], dim=1)
                logits = model(input_ids=token, attention_mask=m, position_ids=pos, past_key_values=cache,
                               use_cache=True).logits[:, -1]
                pointers.append(cache.layers[0].keys.data_ptr())
        return out, pointers, logits

    steps = ROOM + 6  # past the first buffer's room: one regrow
    expected, _, last = decode(DynamicCache(config=model.config), steps)
    got, pointers, last_roomy = decode(roomy_cache(model.config), steps)
    assert got == expected
    torch.testing.assert_close(last_roomy, last)
    assert len(set(pointers)) == 2, "one buffer for the prompt and its room, one after it filled"
