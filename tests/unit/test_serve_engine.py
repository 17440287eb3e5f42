"""The transformers engine's batch scheduler on a tiny random Llama with two random LoRA adapters."""

import asyncio
import shutil
from contextlib import nullcontext

import pytest
import torch

from tuneforge.errors import UserError
from tuneforge.models.packed import pack_linear_weights
from tuneforge.serve.engines.base import GenerationRequest, Sampling
from tuneforge.serve.engines.transformers import TransformersEngine, compiled_decoder


@pytest.fixture(scope="module")
def tokenizer():
    from tuneforge.models import load_tokenizer

    return load_tokenizer(None)


def tiny_llama(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def engine(tokenizer):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                      init_lora_weights=False)
    model = get_peft_model(tiny_llama(tokenizer), lora, adapter_name="alpha")
    model.add_adapter("beta", lora)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data.normal_(0, 0.5)  # large enough that each adapter changes the greedy answer
    model.eval()
    pack_linear_weights(model)  # as TransformersEngine.load does on CPU
    eng = TransformersEngine(model, tokenizer, adapters=["alpha", "beta"], max_batch=8)
    yield eng
    eng.close()


def reference(engine, prompt_ids, adapter, max_new_tokens):
    """What the model alone produces with only this adapter active (peft + transformers generate, greedy)."""
    model = engine.model
    ids = torch.tensor([prompt_ids])
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=sorted(engine.scheduler.end_ids),
                  pad_token_id=engine.scheduler.pad_id)
    with torch.inference_mode():
        if adapter is not None:
            model.set_adapter(adapter)
        with model.disable_adapter() if adapter is None and hasattr(model, "disable_adapter") else nullcontext():
            out = model.generate(input_ids=ids, **kwargs)
    return engine.tokenizer.decode(out[0, len(prompt_ids):], skip_special_tokens=True)


async def collect(engine, request, delay=0.0):
    await asyncio.sleep(delay)
    text, last = "", None
    async for chunk in engine.stream(request):
        text += chunk.text
        last = chunk
    return text, last


def greedy(engine, text, adapter, max_tokens=12):
    ids = engine.encode_chat([{"role": "user", "content": text}])
    return GenerationRequest(ids, adapter, Sampling(max_tokens=max_tokens, temperature=0))


def test_mixed_adapter_batch_matches_each_adapter_alone(engine):
    prompts = ["Hello there", "Xin chào, bạn khỏe không?", "A much longer question about the weather in Hà Nội today",
               "Hi", "What is two plus two?", "Tell me a story"]
    adapters = [None, "alpha", "beta", "alpha", "beta", None]
    requests = [greedy(engine, p, a) for p, a in zip(prompts, adapters, strict=True)]

    async def run_all():
        # Staggered arrivals: later requests join a batch that is already decoding (cache merge path).
        return await asyncio.gather(*[collect(engine, r, delay=0.02 * i) for i, r in enumerate(requests)])

    results = asyncio.run(run_all())
    for request, adapter, (text, last) in zip(requests, adapters, results, strict=True):
        assert text == reference(engine, request.prompt_ids, adapter, 12)
        assert last.finish_reason in ("stop", "length")
    # The same prompt under each adapter gives three different answers: the adapters really differ.
    same_prompt = [greedy(engine, "Hello there", a) for a in (None, "alpha", "beta")]

    async def together():
        return await asyncio.gather(*[collect(engine, r) for r in same_prompt])

    answers = asyncio.run(together())
    assert len({t for t, _ in answers}) == 3, answers


def test_concurrent_requests_share_decode_steps(engine):
    before = engine.scheduler.steps
    requests = [greedy(engine, f"question {i}", None, max_tokens=10) for i in range(4)]

    async def run_all():
        return await asyncio.gather(*[collect(engine, r) for r in requests])

    results = asyncio.run(run_all())
    generated = sum(last.completion_tokens for _, last in results)
    steps = engine.scheduler.steps - before
    assert generated >= 4 * 5
    # One at a time would need about `generated` steps; batched, the four rows advance together.
    assert steps <= generated / 2, (steps, generated)


def test_length_finish_counts_tokens(engine):
    _, last = asyncio.run(collect(engine, greedy(engine, "count", "beta", max_tokens=3)))
    if last.finish_reason == "length":
        assert last.completion_tokens == 3
    else:
        assert last.completion_tokens <= 3


def test_ignore_eos_answers_past_the_end_token(engine, monkeypatch):
    ids = engine.encode_chat([{"role": "user", "content": "stop early"}])
    first = engine.tokenizer.encode(asyncio.run(collect(engine, GenerationRequest(
        ids, None, Sampling(max_tokens=1, temperature=0))))[0], add_special_tokens=False)[0]
    monkeypatch.setattr(engine.scheduler, "end_ids", {first})  # the greedy first token now ends the answer
    _, last = asyncio.run(collect(engine, GenerationRequest(ids, None, Sampling(max_tokens=6, temperature=0))))
    assert (last.finish_reason, last.completion_tokens) == ("stop", 1)
    _, last = asyncio.run(collect(engine, GenerationRequest(ids, None, Sampling(max_tokens=6, temperature=0,
                                                                                ignore_eos=True))))
    assert (last.finish_reason, last.completion_tokens) == ("length", 6)


def test_closing_a_stream_frees_its_row(engine):
    async def take_two():
        stream = engine.stream(greedy(engine, "long answer please", "alpha", max_tokens=200))
        got = [await stream.__anext__(), await stream.__anext__()]
        await stream.aclose()
        await asyncio.sleep(0.3)
        return got

    asyncio.run(take_two())
    assert engine.scheduler.rows == []


def test_seeded_sampling_repeats_and_tiny_top_p_is_greedy(engine):
    ids = engine.encode_chat([{"role": "user", "content": "random words"}])

    def sampled(seed, top_p=1.0):
        req = GenerationRequest(ids, None, Sampling(max_tokens=8, temperature=1.0, top_p=top_p, seed=seed))
        return asyncio.run(collect(engine, req))[0]

    assert sampled(7) == sampled(7)
    assert sampled(7) != sampled(8) or sampled(7) != sampled(9)
    # top_p that keeps only the most likely token turns sampling into greedy decoding.
    assert sampled(3, top_p=1e-6) == asyncio.run(collect(engine, greedy(engine, "random words", None, 8)))[0]


SMALL = {"type": "object", "properties": {
    "word": {"type": "string", "maxLength": 8}, "n": {"type": "integer", "minimum": 0, "maximum": 99},
    "ok": {"type": "boolean"}, "pick": {"enum": ["a", "b"]}, "list": {"type": "array", "items": {"type": "integer",
                                                                        "minimum": 0, "maximum": 9}, "maxItems": 2},
}, "required": ["word", "n", "ok", "pick", "list"], "additionalProperties": False}


def test_json_schema_rows_batch_with_free_rows(engine):
    """Constrained and free rows, greedy and sampled, share decode steps; each constrained answer is valid JSON
    for its schema, and the free rows say exactly what they say alone."""
    import json

    import jsonschema

    def request(text, adapter, schema, temperature=0.0):
        ids = engine.encode_chat([{"role": "user", "content": text}])
        return GenerationRequest(ids, adapter, Sampling(max_tokens=120, temperature=temperature, seed=5), schema)

    free = [greedy(engine, "Hello there", "alpha", 12), greedy(engine, "Tell me a story", None, 12)]
    constrained = [request("json please", None, SMALL), request("more json", "beta", SMALL, 1.0),
                   request("any object", "alpha", {"type": "object", "properties": {"x": {"enum": [1, 2]}},
                                                   "required": ["x"], "additionalProperties": False})]
    before = engine.scheduler.steps

    async def run_all():
        return await asyncio.gather(*[collect(engine, r, delay=0.01 * i) for i, r in enumerate(free + constrained)])

    results = asyncio.run(run_all())
    for req, (text, last) in zip(constrained, results[2:], strict=True):
        assert last.finish_reason == "stop", text
        jsonschema.validate(json.loads(text), req.json_schema)
    for req, (text, _) in zip(free, results[:2], strict=True):
        assert text == reference(engine, req.prompt_ids, req.adapter, 12)
    generated = sum(last.completion_tokens for _, last in results)
    assert engine.scheduler.steps - before < generated / 2  # batched, not one request after another


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile's C++ kernels need g++, which this machine lacks")
def test_compiled_engine_answers_like_generate_on_its_warmed_graphs(tokenizer):
    model = tiny_llama(tokenizer)
    pack_linear_weights(model)
    lean = compiled_decoder(model)
    engine = TransformersEngine(model, tokenizer, max_batch=8, lean=lean)
    try:
        prompts = ["Hello there", "Xin chào, bạn khỏe không?", "A much longer question about Hà Nội today", "Hi"]
        requests = [greedy(engine, p, None, max_tokens=16) for p in prompts]

        async def run_all():  # staggered: rows join a running batch, finish and leave it
            return await asyncio.gather(*[collect(engine, r, delay=0.02 * i) for i, r in enumerate(requests)])

        for request, (text, _) in zip(requests, asyncio.run(run_all()), strict=True):
            # A random model may stop mid-character: the stream holds back the incomplete bytes, decode() shows "\ufffd"
            assert text == reference(engine, request.prompt_ids, None, 16).removesuffix("\ufffd")
        assert engine.scheduler.steps > 0 and lean.eager_steps == 0
    finally:
        engine.close()


def test_compile_refuses_adapters_and_other_layouts_with_one_clear_error(tokenizer):
    from transformers import GemmaConfig, GemmaForCausalLM

    with pytest.raises(UserError, match="--compile serves the base model alone"):
        TransformersEngine.load("unused", {"alpha": "unused"}, compile=True)
    gemma = GemmaForCausalLM(GemmaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=1, head_dim=16, intermediate_size=64))
    with pytest.raises(UserError, match="--compile needs a Llama, Qwen2 or Mistral layout; this model \\(gemma\\)"):
        compiled_decoder(gemma)
