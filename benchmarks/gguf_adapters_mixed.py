"""Two GGUF LoRA adapters served at once by the llamacpp engine, mixed requests from concurrent clients, every
answer checked against its merged GGUF run alone by llama-cpp-python.

    nice .venv/bin/python benchmarks/gguf_adapters_mixed.py --adapter sst2=runs/demo-sst2/adapter \\
        --adapter chat=runs/chat-short/adapter --clients 8

Writes (under --out): the embedded model as a base GGUF of --type, each adapter as adapter GGUF (tuneforge's
gguf_lora writer) and merged into the base as a GGUF of the same type. Then starts `tuneforge serve BASE --adapter
NAME=FILE ... --parallel SLOTS` and sends every golden prompt (tuneforge.export.parity) to the base and to each
adapter, --rounds times, from --clients threads with the official openai client (greedy). Reference: the same
prompt through `llama_cpp.Llama(MERGED or BASE).create_chat_completion`, greedy, one at a time. Printed: requests,
errors, 5xx, answers equal to their reference, aggregate tokens/s.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import subprocess
import sys
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import RUN_SERVE, drive, free_port, wait_ready  # noqa: E402


def write_files(adapters: dict[str, str], gguf_type: str, out: Path) -> tuple[Path, dict[str, Path], dict[str, Path]]:
    from peft import PeftModel

    from tuneforge.compress.quant.gguf_lora import write_gguf_lora
    from tuneforge.compress.quant.gguf_writer import write_gguf
    from tuneforge.models import load_model

    out.mkdir(parents=True, exist_ok=True)
    model, tok = load_model(None, dtype="float32")
    base = out / f"base-{gguf_type}.gguf"
    if not base.exists():
        write_gguf(model, tok, base, gguf_type)
    files, merged = {}, {}
    for name, folder in adapters.items():
        files[name] = out / f"{name}.gguf"
        write_gguf_lora(folder, model.config, files[name])
        merged[name] = out / f"merged-{name}-{gguf_type}.gguf"
        fresh, _ = load_model(None, dtype="float32")
        write_gguf(PeftModel.from_pretrained(fresh, folder).merge_and_unload().eval(), tok, merged[name], gguf_type)
    return base, files, merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", action="append", required=True, metavar="NAME=PEFT_FOLDER")
    parser.add_argument("--type", default="f16", help="GGUF type of the base and merged files")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="times every (prompt, model) pair is sent")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--out", default="runs/gguf_adapters_mixed")
    args = parser.parse_args()
    import llama_cpp

    from tuneforge.export.parity import GOLDEN_PROMPTS

    adapters = dict(a.split("=", 1) for a in args.adapter)
    base, files, merged = write_files(adapters, args.type, Path(args.out))
    reference = {}
    for name, path in [(None, base), *merged.items()]:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=2048, flash_attn=True, verbose=False)
        for i, messages in enumerate(GOLDEN_PROMPTS):
            reference[(name, i)] = llm.create_chat_completion(messages=messages, temperature=0,
                                                              max_tokens=args.max_tokens)["choices"][0]["message"]["content"]
        del llm
    port = free_port()
    flags = [f"--adapter={n}={f}" for n, f in files.items()]
    proc = subprocess.Popen([sys.executable, "-c", RUN_SERVE, str(base), *flags, "--port", str(port),
                            "--parallel", str(args.slots), "--n-ctx", "2048", "--log-level", "warning"])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, "tuneforge serve")
        client = openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=600)
        base_id = client.models.list().data[0].id
        work = list(itertools.product(range(len(GOLDEN_PROMPTS)), [None, *files], range(args.rounds)))

        def ask(i: int, name: str | None):
            r = client.chat.completions.create(model=name or base_id, messages=GOLDEN_PROMPTS[i], temperature=0,
                                               max_tokens=args.max_tokens)
            return name, i, r.choices[0].message.content, r.usage.completion_tokens

        results, errors, wall = drive(args.clients, lambda c: [functools.partial(ask, i, name)
                                                               for i, name, _ in work[c::args.clients]])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    equal = [(name, i) for name, i, text, _ in results if text == reference[(name, i)]]
    for name, i, text, _ in results:
        if text != reference[(name, i)]:
            print(f"differs: model {name or 'base'}, prompt {i}: {text!r} vs merged {reference[(name, i)]!r}")
    print(f"{args.type} base + {len(files)} adapters, {args.clients} clients, {args.slots} slots: {len(results)} answers, "
          f"{len(errors)} errors, {sum(e.startswith('5') for e in errors)} 5xx; {len(equal)}/{len(results)} equal to "
          f"their merged GGUF's answer; {sum(r[3] for r in results) / wall:.1f} output tokens/s")
    print("per model:", {name or "base": sum(1 for n, _ in equal if n == name) for name in [None, *files]})


if __name__ == "__main__":
    main()
