"""vLLM's `ignore_eos` on every engine: the answer runs to max_tokens, as load benches need to compare equal work."""


def test_ignore_eos_answers_up_to_max_tokens(engine_client):
    model = engine_client.models.list().data[0].id
    ask = dict(model=model, messages=[{"role": "user", "content": "Hi!"}], temperature=0,
               max_tokens=64)
    short = engine_client.chat.completions.create(**ask)
    assert short.choices[0].finish_reason == "stop" and short.usage.completion_tokens < 64  # a short answer
    long = engine_client.chat.completions.create(**ask, extra_body={"ignore_eos": True})
    assert (long.choices[0].finish_reason, long.usage.completion_tokens) == ("length", 64)
    assert long.choices[0].message.content.startswith(short.choices[0].message.content.strip()[:10])
