"""OpenAI request parsing, stop strings, streaming detokenization, metrics text and serve options."""

import asyncio

import pytest

from tuneforge.errors import UserError
from tuneforge.recipes.serve import make_config, parse_adapters
from tuneforge.serve import protocol as oai
from tuneforge.serve.engines.base import Chunk, IncrementalDecoder, with_stop_strings
from tuneforge.serve.metrics import Metrics


def test_chat_request_defaults_and_content_parts():
    req = oai.parse(oai.ChatCompletionRequest, {"model": "m", "messages": [
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
        req = oai.parse(oai.ChatCompletionRequest, body)
        req.stops()
    assert e.value.status == 400 and e.value.param == param
    assert set(e.value.body()["error"]) == {"message", "type", "param", "code"}


def test_completion_request_defaults_to_16_tokens():
    assert oai.parse(oai.CompletionRequest, {"model": "m", "prompt": "hi"}).wanted_tokens() == 16


def test_response_format_gives_the_schema_to_follow():
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}}
    assert oai.parse(oai.ChatCompletionRequest, {**body, "response_format": fmt}).json_schema() == schema
    json_object = {**body, "response_format": {"type": "json_object"}}
    assert oai.parse(oai.ChatCompletionRequest, json_object).json_schema() == {"type": "object"}
    assert oai.parse(oai.ChatCompletionRequest, {**body, "response_format": {"type": "text"}}).json_schema() is None
    with pytest.raises(oai.APIError) as e:
        oai.parse(oai.ChatCompletionRequest, {**body, "response_format": {"type": "json_schema"}}).json_schema()
    assert e.value.param == "response_format.json_schema"
    completion = {"model": "m", "prompt": "x", "response_format": {"type": "json_object"}}
    assert oai.parse(oai.CompletionRequest, completion).json_schema() == {"type": "object"}


def test_unsupported_schema_is_a_400_naming_the_reason():
    from tuneforge.serve.structured import grammar_for

    assert grammar_for({"type": "object", "properties": {"a": {"enum": ["x", "y"]}}})
    for schema, reason in [({"type": "wat"}, "Invalid type"), ({"not": {"type": "string"}}, "Unimplemented"),
                           ({"$ref": "#/nowhere"}, "does not exist")]:
        with pytest.raises(oai.APIError) as e:
            grammar_for(schema)
        assert e.value.status == 400 and e.value.param == "response_format" and reason in e.value.message


def test_response_builders_match_the_declared_models():
    """The dicts the server sends are what /openapi.json declares."""
    oai.ChatCompletion.model_validate(oai.chat_response("chatcmpl-1", "m", "hi", "stop", 3, 1))
    oai.Completion.model_validate(oai.completion_response("cmpl-1", "m", "hi", "length", 3, 1))
    for with_usage in (False, True):
        oai.ChatCompletionChunk.model_validate(oai.chat_chunk("c", 1, "m", {"role": "assistant", "content": ""},
                                                              None, with_usage))
        oai.ChatCompletionChunk.model_validate(oai.chat_chunk("c", 1, "m", {}, "stop", with_usage))
        oai.Completion.model_validate(oai.completion_chunk("c", 1, "m", "x", None, with_usage))
    oai.ChatCompletionChunk.model_validate(oai.usage_chunk("c", 1, "m", "chat.completion.chunk", 3, 1))
    oai.Completion.model_validate(oai.usage_chunk("c", 1, "m", "text_completion", 3, 1))
    oai.ErrorResponse.model_validate(oai.APIError(400, "bad", param="n").body())


def test_fastapi_validation_errors_become_openai_400s():
    from tuneforge.serve.app import invalid_body

    bad_json = invalid_body([{"type": "json_invalid", "loc": ("body", 3), "msg": "JSON decode error",
                              "ctx": {"error": "Expecting value"}}])
    assert bad_json.status == 400 and "Expecting value" in bad_json.message and bad_json.param is None
    assert invalid_body([{"type": "model_attributes_type", "loc": ("body",), "msg": "x"}]).message == \
        "the request body must be a JSON object"
    field = invalid_body([{"type": "greater_than", "loc": ("body", "temperature"), "msg": "Input should be > 0"}])
    assert field.param == "temperature" and field.message == "temperature: Input should be > 0"


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
