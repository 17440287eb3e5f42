"""vLLM's `ignore_eos` on every engine: the answer runs to max_tokens, as load benches need to compare equal work."""

import openai
import pytest


@pytest.fixture(params=["embedded_server", "gguf_server", "vllm_server"], ids=["transformers", "llamacpp", "vllm"])
def client(request):
    if request.param == "gguf_server":
        pytest.importorskip("llama_cpp")
    live = request.getfixturevalue(request.param)
    return openai.OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0, timeout=120)


def test_ignore_eos_answers_up_to_max_tokens(client):
    model = client.models.list().data[0].id
    ask = dict(model=model, messages=[{"role": "user", "content": "Hi!"}], temperature=0,
               max_tokens=64)
    short = client.chat.completions.create(**ask)
    assert short.choices[0].finish_reason == "stop" and short.usage.completion_tokens < 64  # a short answer
    long = client.chat.completions.create(**ask, extra_body={"ignore_eos": True})
    assert (long.choices[0].finish_reason, long.usage.completion_tokens) == ("length", 64)
    assert long.choices[0].message.content.startswith(short.choices[0].message.content.strip()[:10])
