"""One prepared run of the CUDA paths (QLoRA, bitsandbytes NF4 and 8-bit) for a session lent a GPU.

No real weights reach the GPU machine (the embedded model's package is over the device tool's 64 MiB carry
limit), so this builds a random Llama of a real size (TinyLlama's shape by default: 1.1B parameters), with the
small trained BPE tokenizer the unit tests use, and synthetic sentiment rows. What it measures is memory,
speed and that each path runs, learns and reloads; not accuracy.

    python benchmarks/gpu_check.py --out DIR          # on a GPU machine
    python benchmarks/gpu_check.py --out DIR --tiny   # the same steps on a 2-block, 64-wide model (a CPU smoke test)

The GPU machine's image has PyTorch, transformers, peft and accelerate but not bitsandbytes, pydantic or gguf,
and cannot download; carry them as wheels for its Python 3.12 (44 MB, under the 64 MiB carry limit), pinned
to versions that fit together (pydantic pins its core; both need typing-extensions >= 4.16):

    echo /.gpu-wheels/ >> .git/info/exclude
    .venv/bin/python -m pip download -d .gpu-wheels --python-version 3.12 --platform manylinux2014_x86_64 \
        --platform manylinux_2_24_x86_64 --only-binary=:all: --no-deps \
        bitsandbytes==0.50.2 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
        typing-inspection==0.4.5 typing-extensions==4.16.0 gguf==0.19.0
    # device run, carry [".gpu-wheels"]:
    python3 -m pip install -q --no-index --no-deps --target /tmp/extra .gpu-wheels/*.whl &&
        PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/extra:src python3 benchmarks/gpu_check.py --out $OUT

Each arm is its own `tuneforge` process (benchmarks/qlora_memory.py's arms: LoRA, QLoRA, QLoRA with gradient
checkpointing; then `tuneforge quantize` with bnb_nf4 and bnb_8bit). Prints one line per arm and writes
DIR/gpu_check.json after every arm, so a run cut off by its time limit still returns what it measured. On a GPU
the memory column is finetune's own peak GPU memory (train.peak_gpu_memory_gb, GB), else the process's peak RSS (GiB).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from peak_memory import run_tuneforge
from qlora_memory import ARMS, run_arm

ROOT = Path(__file__).resolve().parents[1]
TINYLLAMA = {"hidden": 2048, "layers": 22, "intermediate": 5632, "heads": 32, "kv_heads": 4, "vocab": 32000}
TINY = {"hidden": 64, "layers": 2, "intermediate": 128, "heads": 4, "kv_heads": 2, "vocab": 512}
GOOD = ["wonderful", "moving", "funny", "brilliant", "warm", "gripping", "tender", "sharp"]
BAD = ["dull", "clumsy", "tedious", "shallow", "messy", "boring", "flat", "lifeless"]


def build_model(folder: Path, shape: dict) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT / "tests" / "unit"))
    from test_gguf_tiny import tiny_tokenizer  # the unit tests' trained BPE with a ChatML template

    tok = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=max(shape["vocab"], len(tok)), hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # a 1.1B init is minutes on a CPU
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the arms run in their own processes: leave them the whole GPU


def write_rows(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    lines = ["sentence\tlabel"]
    for _ in range(n):
        label = rng.random() < 0.5
        words = GOOD if label else BAD
        lines.append(f"the film was {rng.choice(words)} and the cast was {rng.choice(words)} .\t{int(label)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_configs(work: Path, model: Path, tiny: bool) -> tuple[Path, Path]:
    import yaml

    split = {"text_column": "sentence", "label_column": "label"}
    common = {"model": str(model), "task": {"name": "sentiment", "labels": ["negative", "positive"]}}
    finetune = {
        **common, "name": "lora", "dtype": "float32" if tiny else "bfloat16", "method": "lora",
        "data": {"train": {"path": str(work / "train.tsv"), **split}, "dev": {"path": str(work / "dev.tsv"), **split}},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "train": {"batch_size": 8, "lr": 2.0e-4, "max_seq_len": 128, "epochs": 1, "log_every": 1},
        "eval": {"batch_size": 16, "max_new_tokens": 4},
    }
    quantize = {
        **common, "name": "nf4", "method": "bnb_nf4", "data": {"dev": {"path": str(work / "dev.tsv"), **split}},
        "eval": {"batch_size": 16, "max_new_tokens": 4, "limit": 16},
        "speed": {"prompt_tokens": 64, "new_tokens": 32, "repeats": 2},
    }
    paths = work / "finetune.yaml", work / "quantize.yaml"
    for path, cfg in zip(paths, (finetune, quantize), strict=True):
        path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return paths


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="where gpu_check.json goes")
    p.add_argument("--tiny", action="store_true", help="a 2-block, 64-wide model: check the script itself on a CPU")
    p.add_argument("--steps", type=int, default=40, help="training steps per finetune arm")
    args = p.parse_args()
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    shape = TINY if args.tiny else TINYLLAMA
    report: dict = {"device": device, "shape": shape, "steps": args.steps, "finetune": {}, "quantize": {}}
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2), encoding="utf-8")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.time()
        build_model(work / "model", shape)
        report["build_seconds"] = time.time() - t0
        save()
        write_rows(work / "train.tsv", args.steps * 8, seed=0)
        write_rows(work / "dev.tsv", 64, seed=1)
        finetune_cfg, quantize_cfg = write_configs(work, work / "model", args.tiny)
        for arm in ARMS:
            result = run_arm(str(finetune_cfg), arm, args.steps, work / "runs")
            seen = losses(work / "runs" / arm.replace("+", "-"))
            report["finetune"][arm] = {**result, "first_loss": seen[0], "last_loss": seen[-1]}
            gpu = result.get("peak_gpu_memory_gb")
            memory = f"GPU {gpu:.2f} GB" if gpu is not None else f"RSS {result['peak_rss_gb']:.2f} GiB"
            print(f"{arm:20s} {memory}  {result['tokens_per_second']:.0f} tokens/s  loss {seen[0]:.3f} -> {seen[-1]:.3f}", flush=True)
            save()
        for method in ("bnb_nf4", "bnb_8bit"):
            run_tuneforge(["quantize", str(quantize_cfg), f"method={method}", f"name={method}", f"output_dir={work / 'runs'}"], method)
            m = json.loads((work / "runs" / method / "metrics.json").read_text())
            report["quantize"][method] = {k: m.get(k) for k in ("size_before_bytes", "size_after_bytes", "speed_before", "speed_after")}
            print(f"{method:20s} {m['size_after_bytes'] / 1e6:.0f} MB of {m['size_before_bytes'] / 1e6:.0f}  decode "
                  f"{m['speed_after']['decode_tok_s']:.0f} vs {m['speed_before']['decode_tok_s']:.0f} tok/s (random weights)", flush=True)
            save()
    print(f"device: {device}; written {args.out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
