"""OpenAI request parsing, stop strings, streaming detokenization, metrics text and serve options."""

import asyncio

import pytest

from tuneforge.errors import UserError
from tuneforge.recipes.serve import make_config, parse_adapters
from tuneforge.serve import protocol as oai
from tuneforge.serve.app import parse
from tuneforge.serve.engines.base import Chunk, IncrementalDecoder, with_stop_strings
from tuneforge.serve.metrics import Metrics


def test_chat_request_defaults_and_content_parts():
    req = parse(oai.ChatCompletionRequest, {"model": "m", "messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "Xin "}, {"type": "text", "text": "chào"}]}],
        "user": "ignored-extra"})
    assert req.n == 1 and req.temperature == 1.0 and req.wanted_tokens() is None
    assert req.conversation() == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Xin chào"}]


@pytest.mark.parametrize("body, param", [
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 3}, "n"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": 0}, "top_p"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
])
def test_bad_requests_name_the_parameter(body, param):
    with pytest.raises(oai.APIError) as e:
        req = parse(oai.ChatCompletionRequest, body)
        req.stops()
    assert e.value.status == 400 and e.value.param == param
    assert set(e.value.body()["error"]) == {"message", "type", "param", "code"}


def test_completion_request_defaults_to_16_tokens():
    assert parse(oai.CompletionRequest, {"model": "m", "prompt": "hi"}).wanted_tokens() == 16


async def _chunks(pieces, finish="length"):
    for i, p in enumerate(pieces):
        yield Chunk(p, i + 1, finish if i == len(pieces) - 1 else None)


def _run_stops(pieces, stops):
    async def go():
        return [c async for c in with_stop_strings(_chunks(pieces), stops)]

    return asyncio.run(go())


def test_stop_string_split_across_chunks_is_cut():
    out = _run_stops(["Hello wo", "rld. ", "END", "more"], ["END"])
    assert "".join(c.text for c in out) == "Hello world. " and out[-1].finish_reason == "stop"


def test_text_without_stop_passes_whole():
    out = _run_stops(["Chào ", "bạn", "!"], ["###"])
    assert "".join(c.text for c in out) == "Chào bạn!" and out[-1].finish_reason == "length"


def test_incremental_decoder_keeps_vietnamese_intact():
    from tuneforge.models import load_tokenizer

    tok = load_tokenizer(None)
    text = "Tiếng Việt có dấu: ằ ẵ ặ ữ ỵ — 😀 xong."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(tok)
    pieces = [decoder.push(i) for i in ids]
    assert "".join(pieces) == tok.decode(ids) == text
    assert not any("\ufffd" in p for p in pieces)


def test_metrics_render_prometheus_text():
    m = Metrics()
    m.inc("tuneforge_requests_total", endpoint="/v1/chat/completions", status="200")
    m.observe("tuneforge_request_latency_seconds", 0.3)
    m.set("tuneforge_queue_depth", 2)
    text = m.render()
    assert 'tuneforge_requests_total{endpoint="/v1/chat/completions",status="200"} 1' in text
    assert 'tuneforge_request_latency_seconds_bucket{le="0.25"} 0' in text
    assert 'tuneforge_request_latency_seconds_bucket{le="0.5"} 1' in text
    assert "tuneforge_request_latency_seconds_count 1" in text and "tuneforge_queue_depth 2" in text


def test_adapter_flags_and_port_env(monkeypatch):
    assert parse_adapters(["a=/x/a", "runs/sst2/adapter"]) == {"a": "/x/a", "sst2": "runs/sst2/adapter"}
    with pytest.raises(UserError, match="given twice"):
        parse_adapters(["a=/x", "a=/y"])
    monkeypatch.setenv("PORT", "9123")
    config = make_config(None)
    assert config.port == 9123 and config.host == "127.0.0.1" and config.api_key is None
    assert make_config(None, port=8001).port == 8001
    with pytest.raises(UserError, match="--max-tokens"):
        make_config(None, max_tokens=0)
    assert "secret" not in repr(make_config(None, api_key="secret"))
