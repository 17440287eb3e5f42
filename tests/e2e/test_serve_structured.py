"""response_format (json_object, json_schema) with the embedded model, on every engine (vllm: vLLM's CPU build from
.venv-vllm, skipped without it), through the openai client: every answer parses as JSON and validates against its
schema."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

pytestmark = pytest.mark.e2e

# Bounded strings and arrays: a 135M model decoding greedily can repeat itself inside an unbounded one until
# max_tokens cuts the JSON off (finish_reason "length"), which says nothing about the constraint; so are numbers.
NAME = {"type": "string", "maxLength": 40}
PERSON = {"type": "object", "properties": {
    "name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "color": {"enum": ["red", "green", "blue"]}, "hobbies": {"type": "array", "items": NAME, "maxItems": 3},
}, "required": ["name", "age", "color", "hobbies"], "additionalProperties": False}
CITY = {"type": "object", "properties": {
    "city": NAME, "country": NAME, "population": {"type": "integer", "minimum": 0, "maximum": 10**9},
}, "required": ["city", "country", "population"], "additionalProperties": False}
REVIEW = {"type": "object", "properties": {
    "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
    "score": {"type": "integer", "minimum": 1, "maximum": 5}, "keywords": {"type": "array", "items": NAME, "maxItems": 4},
}, "required": ["sentiment", "score", "keywords"], "additionalProperties": False}
BOOK = {"type": "object", "properties": {
    "title": {"type": "string", "maxLength": 60}, "year": {"type": "integer"}, "in_print": {"type": "boolean"},
    "authors": {"type": "array", "items": {"type": "object", "properties": {"name": NAME}, "required": ["name"],
                                           "additionalProperties": False}, "minItems": 1, "maxItems": 2},
}, "required": ["title", "year", "in_print", "authors"], "additionalProperties": False}
CASES = [
    (PERSON, "Invent a person: their name, age, favourite colour and hobbies."),
    (CITY, "Tell me about the capital of France."),
    (REVIEW, "Review: 'The phone is fast and the battery lasts two days.' Rate it."),
    (BOOK, "Describe a famous novel."),
    (PERSON, "Xin chào! Hãy mô tả một người bạn."),
]


def ask(client, schema, prompt, **kw):
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    kw = {"temperature": 0, "max_tokens": 200, **kw}
    return client.chat.completions.create(model=client.models.list().data[0].id, response_format=fmt,
                                          messages=[{"role": "user", "content": prompt}], **kw)




def test_every_answer_follows_its_schema(engine_client):
    for schema, prompt in CASES:
        r = ask(engine_client, schema, prompt)
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_streamed_json_equals_the_whole_answer(engine_client):
    schema, prompt = CASES[2]
    whole = ask(engine_client, schema, prompt).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in ask(engine_client, schema, prompt, stream=True) if c.choices)
    assert streamed == whole
    jsonschema.validate(json.loads(streamed), schema)


def test_sampled_answers_and_json_object_mode(engine_client):
    for seed in (1, 2):
        r = ask(engine_client, REVIEW, CASES[2][1], temperature=0.9, seed=seed)
        jsonschema.validate(json.loads(r.choices[0].message.content), REVIEW)
    model = engine_client.models.list().data[0].id
    r = engine_client.chat.completions.create(model=model, messages=[{"role": "user", "content": "List two fruits as JSON."}],
                                       response_format={"type": "json_object"}, temperature=0, max_tokens=200)
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    r = engine_client.completions.create(model=model, prompt="A JSON object describing a cat:", max_tokens=120,
                                  temperature=0, extra_body={"response_format": {"type": "json_object"}})
    assert isinstance(json.loads(r.choices[0].text), dict)


def test_a_cut_off_answer_says_length(engine_client):
    r = ask(engine_client, PERSON, CASES[0][1], max_tokens=5)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5


@pytest.mark.parametrize("schema, reason", [
    ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "Unimplemented"),
    ({"type": "wat"}, "Invalid type"),
    ({"type": "string", "pattern": "(?<=a)b"}, "look-around"),
])
def test_unsupported_schema_is_400_with_the_reason(embedded_server, schema, reason):
    client = openai.OpenAI(base_url=embedded_server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, schema, "hi")
    assert e.value.param == "response_format" and e.value.code == "invalid_json_schema"
    assert reason in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smollm2-135m-instruct", messages=[{"role": "user", "content": "hi"}],
                                       response_format={"type": "json_schema"})
    assert e.value.param == "response_format.json_schema"
