"""The llamacpp engine's continuous batching on a tiny random GGUF: answers decoded together equal answers
decoded alone, a cached prompt prefix is not read again, a closed stream frees its slot, sampling is seeded."""

from __future__ import annotations

import asyncio

import pytest
from test_gguf_tiny import tiny_chat_model

from tuneforge.serve.engines.base import GenerationRequest, Sampling, sample_token

pytest.importorskip("llama_cpp")

QUESTIONS = ["What is the capital of France?", "Thủ đô của Việt Nam là gì?", "numbers, punctuation!?",
             "The quick brown fox", "Xin chào, bạn khỏe không?", "In 2024 there were", "sentiment: positive"]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from tuneforge.compress.quant.gguf_writer import write_gguf

    model, tok = tiny_chat_model(seed=3)
    return write_gguf(model, tok, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", "f32")


def engine(path, parallel: int):
    from tuneforge.serve.engines.llamacpp import LlamaCppEngine

    return LlamaCppEngine.load(path, n_ctx=256, n_threads=1, parallel=parallel)


async def answer(eng, question: str, *, max_tokens: int = 12, **sampling) -> tuple[str, int, str]:
    ids = eng.encode_chat([{"role": "user", "content": question}])
    text, tokens, finish = "", 0, None
    async for chunk in eng.stream(GenerationRequest(ids, None, Sampling(max_tokens=max_tokens, **sampling))):
        text, tokens, finish = text + chunk.text, chunk.completion_tokens, chunk.finish_reason
    return text, tokens, finish


def test_requests_decoded_together_answer_as_when_alone(tiny_gguf):
    alone = engine(tiny_gguf, parallel=1)
    together = engine(tiny_gguf, parallel=3)  # 7 requests over 3 slots: some wait for a slot to free

    async def run():
        one_by_one = [await answer(alone, q, temperature=0) for q in QUESTIONS]
        at_once = await asyncio.gather(*(answer(together, q, temperature=0) for q in QUESTIONS))
        return one_by_one, at_once

    try:
        one_by_one, at_once = asyncio.run(run())
    finally:
        alone.close()
        together.close()
    assert at_once == one_by_one
    assert all(finish in ("stop", "length") for _, _, finish in at_once)
    assert any(tokens == 12 and finish == "length" for _, tokens, finish in at_once)


def test_a_cached_prefix_is_not_read_again(tiny_gguf):
    eng = engine(tiny_gguf, parallel=2)
    try:
        first = asyncio.run(answer(eng, QUESTIONS[0], temperature=0))
        read = eng.scheduler.prompt_tokens_read
        again = asyncio.run(answer(eng, QUESTIONS[0], temperature=0))
        assert again == first
        assert eng.scheduler.prompt_tokens_read - read == 1  # only the last prompt token, for its logits
        read = eng.scheduler.prompt_tokens_read
        other = eng.encode_chat([{"role": "user", "content": QUESTIONS[1]}])
        asyncio.run(answer(eng, QUESTIONS[1], temperature=0))
        from tuneforge.serve.engines.llamacpp_slots import common_prefix

        shared = common_prefix(eng.encode_chat([{"role": "user", "content": QUESTIONS[0]}]), other)
        assert eng.scheduler.prompt_tokens_read - read == len(other) - shared  # the template's opening is reused
    finally:
        eng.close()


def test_a_closed_stream_frees_its_slot(tiny_gguf):
    eng = engine(tiny_gguf, parallel=1)

    async def run():
        ids = eng.encode_chat([{"role": "user", "content": QUESTIONS[2]}])
        stream = eng.stream(GenerationRequest(ids, None, Sampling(max_tokens=200, temperature=0)))
        await anext(stream)
        await stream.aclose()  # the client went away mid-answer
        return await asyncio.wait_for(answer(eng, QUESTIONS[3], temperature=0), 60)

    try:
        text, tokens, finish = asyncio.run(run())
        assert tokens >= 1 and finish in ("stop", "length")
        assert all(slot.job is None for slot in eng.scheduler.slots)
    finally:
        eng.close()


def test_sampling_is_seeded(tiny_gguf):
    eng = engine(tiny_gguf, parallel=2)

    async def run():
        return await asyncio.gather(*(answer(eng, QUESTIONS[4], max_tokens=20, temperature=1.5, seed=s)
                                      for s in (7, 7, 8)))

    try:
        a, b, c = asyncio.run(run())
    finally:
        eng.close()
    assert a == b and a != c


def test_sample_token_follows_temperature_and_top_p():
    import torch

    logits = torch.tensor([0.0, 3.0, 2.9, -1.0])
    generator = torch.Generator().manual_seed(0)
    assert sample_token(logits, Sampling(max_tokens=1, temperature=0), None) == 1
    nucleus = Sampling(max_tokens=1, temperature=1.0, top_p=1e-6)
    assert {sample_token(logits, nucleus, generator) for _ in range(50)} == {1}  # the top token alone
    drawn = [sample_token(logits, Sampling(max_tokens=1), generator) for _ in range(4000)]
    p = torch.softmax(logits, -1)
    assert abs(drawn.count(2) / 4000 - float(p[2])) < 0.03


def test_mixed_adapters_answer_as_their_merged_models(tmp_path):
    """Base, adapter a and adapter b requests decoded at once: each answers as its merged GGUF served alone."""
    from peft import LoraConfig, get_peft_model

    from tuneforge.compress.quant.gguf_lora import write_gguf_lora
    from tuneforge.compress.quant.gguf_writer import write_gguf
    from tuneforge.serve.engines.llamacpp import LlamaCppEngine

    base, tok = tiny_chat_model(seed=3)
    write_gguf(base, tok, tmp_path / "base.gguf", "f32")
    for i, name in enumerate("ab"):
        model, _ = tiny_chat_model(seed=3)
        peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj",
                                                "o_proj", "gate_proj", "up_proj", "down_proj"]))
        torch_seed(10 + i)
        for param_name, p in peft.named_parameters():
            if "lora_B" in param_name:
                p.data.normal_(0, 0.2)
        peft.save_pretrained(tmp_path / name)
        write_gguf_lora(tmp_path / name, model.config, tmp_path / f"{name}.gguf")
        write_gguf(peft.merge_and_unload().eval(), tok, tmp_path / f"merged-{name}.gguf", "f32")

    asks = [(q, adapter) for q in QUESTIONS[:3] for adapter in (None, "a", "b")]
    mixed = LlamaCppEngine.load(tmp_path / "base.gguf", n_ctx=256, n_threads=1, parallel=4,
                                adapters={"a": str(tmp_path / "a.gguf"), "b": str(tmp_path / "b.gguf")})
    alone = {None: engine(tmp_path / "base.gguf", 1), "a": engine(tmp_path / "merged-a.gguf", 1),
             "b": engine(tmp_path / "merged-b.gguf", 1)}

    async def ask(eng, question, adapter):
        ids = eng.encode_chat([{"role": "user", "content": question}])
        text = ""
        async for chunk in eng.stream(GenerationRequest(ids, adapter, Sampling(max_tokens=12, temperature=0))):
            text += chunk.text
        return text

    async def run():
        together = await asyncio.gather(*(ask(mixed, q, a) for q, a in asks))
        reference = [await ask(alone[a], q, None) for q, a in asks]
        return together, reference

    try:
        together, reference = asyncio.run(run())
    finally:
        for eng in (mixed, *alone.values()):
            eng.close()
    assert together == reference
    assert len({reference[i] for i in range(3)}) == 3  # the adapters change the answers


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def test_a_failed_decode_fails_its_request_and_the_engine_goes_on(tiny_gguf):
    eng = engine(tiny_gguf, parallel=1)  # 256 KV cells per sequence

    async def overflow():
        ids = eng.encode_text("The quick brown fox " * 60)[:250]
        async for _ in eng.stream(GenerationRequest(ids, None, Sampling(max_tokens=40, temperature=0))):
            pass

    try:
        with pytest.raises(RuntimeError, match="llama_decode failed"):
            asyncio.run(overflow())
        after = asyncio.run(answer(eng, QUESTIONS[0], temperature=0))
    finally:
        eng.close()
    fresh = engine(tiny_gguf, parallel=1)
    try:
        assert after == asyncio.run(answer(fresh, QUESTIONS[0], temperature=0))
    finally:
        fresh.close()
