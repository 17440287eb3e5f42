"""`tuneforge serve` as a process: flags, $PORT, adapters by NAME=PATH, and the embedded model's real answers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

pytestmark = pytest.mark.e2e

RUN_SERVE = ("import argparse, sys; from tuneforge import cli_args; from tuneforge.recipes import serve; "
             "p = argparse.ArgumentParser(); cli_args.serve(p); sys.exit(serve.run(p.parse_args(sys.argv[1:])))")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, deadline_s: float = 120) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready after {deadline_s}s")


def test_serve_process_honours_port_env_and_api_key_file(tiny_paths, tmp_path):
    port = free_port()
    key_file = tmp_path / "key.txt"
    key_file.write_text("file-key-123\n")
    env = {**os.environ, "PORT": str(port), "OMP_NUM_THREADS": "1"}
    args = [tiny_paths["model"], "--adapter", f"alpha={tiny_paths['alpha']}", "--adapter", tiny_paths["beta"],
            "--dtype", "float32", "--api-key-file", str(key_file), "--log-level", "warning"]
    proc = subprocess.Popen([sys.executable, "-c", RUN_SERVE, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        client = openai.OpenAI(base_url=url + "/v1", api_key="file-key-123", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["model", "alpha", "beta"]
        r = client.chat.completions.create(model="beta", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert r.choices[0].message.content
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "file-key-123" not in out  # the key is never logged


def test_bad_adapter_path_is_one_clear_error(tmp_path):
    out = subprocess.run([sys.executable, "-c", "from tuneforge.recipes.serve import serve; "
                          f"serve(adapters={{'x': '{tmp_path}'}})"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "no adapter_config.json" in out.stderr


@pytest.mark.integration
def test_embedded_model_real_answers(embedded_server):
    client = openai.OpenAI(base_url=embedded_server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    r = client.chat.completions.create(model="smollm2-135m-instruct", messages=question, temperature=0, max_tokens=24)
    assert "Paris" in r.choices[0].message.content and r.choices[0].finish_reason == "stop"
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Viết một câu chào bằng tiếng Việt."}],
        temperature=0, max_tokens=32, stream=True) if c.choices]
    assert len(pieces) > 3 and "\ufffd" not in "".join(pieces)


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile's C++ kernels need g++, which this machine lacks")
def test_compiled_server_answers_like_the_eager_one(tiny_paths, tiny_server):
    """`tuneforge serve --compile` as a process: concurrent greedy chats (batched on the compiled step) answer what
    the eager server answers, streamed or not, and no step falls back to eager code."""
    from concurrent.futures import ThreadPoolExecutor

    port = free_port()
    args = [tiny_paths["model"], "--dtype", "float32", "--compile", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen([sys.executable, "-c", RUN_SERVE, *args], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    prompts = ["Hello there", "Xin chào, bạn khỏe không?", "A much longer question about the weather in Hà Nội", "Hi"]

    def answers(base_url: str, model: str) -> list[str]:
        client = openai.OpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0, timeout=120)

        def ask(prompt):
            return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                  temperature=0, max_tokens=16).choices[0].message.content

        with ThreadPoolExecutor(len(prompts)) as pool:
            return list(pool.map(ask, prompts))

    try:
        wait_ready(url, proc, deadline_s=300)
        compiled = answers(url, "model")
        assert compiled == answers(tiny_server.url, "tiny")
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="model", messages=[{"role": "user", "content": prompts[1]}], temperature=0, max_tokens=16,
            stream=True) if c.choices)
        assert streamed == compiled[1]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "run eagerly" not in out, out[-2000:]
