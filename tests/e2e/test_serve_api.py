"""The OpenAI-compatible API on loopback, driven by the official `openai` client (tiny model, two adapters)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

pytestmark = pytest.mark.e2e
http = httpx.Client(timeout=120)  # generous: the test machine is shared and often saturated

HELLO = [{"role": "user", "content": "Xin chào! Hôm nay trời thế nào?"}]


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def ask(client, model="tiny", messages=HELLO, **kw):
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 12)
    return client.chat.completions.create(model=model, messages=messages, **kw)


def test_models_lists_base_and_adapters(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["tiny", "alpha", "beta"]


def test_chat_completion_has_openai_shape(client):
    r = ask(client, max_tokens=5)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "tiny"
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("length", "stop")
    if choice.finish_reason == "length":
        assert r.usage.completion_tokens == 5
    assert r.usage.prompt_tokens > 5 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_streaming_equals_non_streaming_and_reports_usage(client):
    whole = ask(client, max_tokens=16)
    chunks = list(ask(client, max_tokens=16, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_raw_stream_ends_with_done(tiny_server):
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 4, "temperature": 0, "stream": True}
    with http.stream("POST", tiny_server.url + "/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    assert json.loads(lines[0][6:])["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_completions_stream_and_not(client):
    whole = client.completions.create(model="beta", prompt="Once upon a time", max_tokens=8, temperature=0)
    assert whole.object == "text_completion" and whole.choices[0].finish_reason in ("length", "stop")
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="beta", prompt="Once upon a time", max_tokens=8, temperature=0, stream=True))
    assert streamed == whole.choices[0].text


def test_adapters_answer_per_request_without_mixing(client):
    models = ["tiny", "alpha", "beta"] * 3
    alone = {m: ask(client, model=m, max_tokens=16).choices[0].message.content for m in ("tiny", "alpha", "beta")}
    assert len(set(alone.values())) == 3, alone  # the two adapters and the base really answer differently
    results: dict[int, str] = {}

    def call(i, model):
        results[i] = ask(client, model=model, max_tokens=16).choices[0].message.content

    threads = [threading.Thread(target=call, args=(i, m)) for i, m in enumerate(models)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert [results[i] for i in range(len(models))] == [alone[m] for m in models]


def test_stop_string_cuts_the_reply(client):
    full = ask(client, max_tokens=16).choices[0].message.content
    cut_at = full[len(full) // 2:][:3]
    assert cut_at.strip(), full
    r = ask(client, max_tokens=16, stop=[cut_at])
    assert r.choices[0].message.content == full[: full.index(cut_at)]
    assert r.choices[0].finish_reason == "stop"


def test_seed_makes_sampling_repeatable(client):
    a = ask(client, temperature=1.0, top_p=0.9, seed=11, max_tokens=10).choices[0].message.content
    b = ask(client, temperature=1.0, top_p=0.9, seed=11, max_tokens=10).choices[0].message.content
    assert a == b


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_bad_requests_get_openai_error_bodies(tiny_server, client):
    url = tiny_server.url + "/v1/chat/completions"
    r = http.post(url, content=b'{"model": "tiny", "messages": [', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and error_of(r)["type"] == "invalid_request_error"

    with pytest.raises(openai.NotFoundError) as e:
        ask(client, model="no-such-model")
    assert e.value.status_code == 404 and e.value.code == "model_not_found"

    with pytest.raises(openai.BadRequestError) as e:
        ask(client, messages=[{"role": "user", "content": "word " * 400}])
    assert e.value.code == "context_length_exceeded" and e.value.param == "messages"

    with pytest.raises(openai.BadRequestError) as e:
        ask(client, n=2)
    assert e.value.param == "n"

    with pytest.raises(openai.BadRequestError) as e:
        ask(client, max_tokens=5000)
    assert e.value.param == "max_tokens"

    r = http.post(url, json={"model": "tiny", "messages": HELLO, "temperature": 7})
    assert r.status_code == 400 and error_of(r)["param"] == "temperature"

    r = http.post(url, json={"model": "tiny", "messages": [{"role": "user", "content": "x" * 30_000}]})
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"


def test_sagemaker_ping_and_invocations(tiny_server):
    assert http.get(tiny_server.url + "/ping").status_code == 200
    r = http.post(tiny_server.url + "/invocations", json={"model": "alpha", "messages": HELLO, "max_tokens": 4,
                                                           "temperature": 0}, timeout=60)
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"


def test_metrics_are_prometheus_text(tiny_server, client):
    ask(client, max_tokens=3)
    text = http.get(tiny_server.url + "/metrics").text
    assert "# TYPE tuneforge_requests_total counter" in text
    assert 'tuneforge_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    assert 'tuneforge_request_latency_seconds_bucket{le="+Inf"}' in text
    assert "tuneforge_completion_tokens_total" in text and "tuneforge_queue_depth 0" in text


def test_web_page_and_assets_are_served(tiny_server):
    page = http.get(tiny_server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert http.get(tiny_server.url + asset).status_code == 200
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN: the page works offline


def test_full_queue_gets_429_and_api_key_is_required(tiny_paths, server_factory):
    from tuneforge.serve.app import create_app

    live = server_factory(create_app(server_factory.tiny_config(tiny_paths, queue_size=1, api_key="s3cret-key")))
    url = live.url + "/v1/chat/completions"
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 2000, "temperature": 0, "stream": True}
    r = http.post(url, json=body)
    assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"
    authed = openai.OpenAI(base_url=live.url + "/v1", api_key="s3cret-key", max_retries=0, timeout=120)
    assert [m.id for m in authed.models.list().data][0] == "tiny"

    headers = {"Authorization": "Bearer s3cret-key"}
    with http.stream("POST", url, json=body, headers=headers) as long_reply:
        lines = long_reply.iter_lines()  # keep the iterator: dropping it closes the stream
        assert next(lines).startswith("data: ")
        with pytest.raises(openai.RateLimitError) as e:
            authed.chat.completions.create(model="tiny", messages=HELLO, max_tokens=2)
        assert e.value.status_code == 429 and e.value.code == "rate_limit_exceeded"
    # Leaving the stream early cancels its generation and frees the slot.
    deadline = time.monotonic() + 10
    while live.state.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live.state.in_flight == 0
    assert authed.chat.completions.create(model="tiny", messages=HELLO, max_tokens=2).choices


def test_health_is_503_while_loading_then_200(tiny_paths, server_factory):
    from tuneforge.serve.app import create_app
    from tuneforge.serve.engines import load_engine

    release = threading.Event()

    def slow_loader(config):
        release.wait(30)
        return load_engine(config)

    live = server_factory(create_app(server_factory.tiny_config(tiny_paths), loader=slow_loader), wait_ready=False)
    assert http.get(live.url + "/health").json() == {"status": "loading"}
    assert http.get(live.url + "/ping").status_code == 503
    r = http.post(live.url + "/v1/chat/completions", json={"model": "tiny", "messages": HELLO})
    assert r.status_code == 503 and error_of(r)["code"] == "model_not_ready"
    release.set()
    deadline = time.monotonic() + 60
    while http.get(live.url + "/health").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
