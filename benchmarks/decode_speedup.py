"""Decode speed of compressed models against their uncompressed model, measured in one process.

    python benchmarks/decode_speedup.py runs/sst2-distill-half/model --adapter runs/sst2-lora/adapter
    python benchmarks/decode_speedup.py runs/sst2-distill-half/model runs/sst2-blocks25/model --rounds 7

The reference is the model (+ adapter, merged) that the compressed ones came from. Each round times every
model once, in turn (same prompt, greedy, KV cache, one stream: tuneforge.compress.measure.hf_speed), so
a slow spell on a shared machine hits all of them alike; the ratio printed is the median over rounds of
each round's ratio. A single best-of-2 (what `compare` and `distill` report) moved by ±0.2x between runs
on a 2-core machine.
"""

from __future__ import annotations

import argparse
import statistics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="saved model folders (run folders' model/) to compare")
    p.add_argument("--reference", default="smollm2-135m-instruct", help="the uncompressed model: name or folder")
    p.add_argument("--adapter", default=None, help="LoRA adapter merged into the reference")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    args = p.parse_args()

    import torch

    from tuneforge.compress.measure import count_parameters, hf_speed, speed_prompt_ids
    from tuneforge.models.loading import load_merged, reload

    torch.manual_seed(0)
    reference, tok = load_merged(args.reference, args.adapter, "float32")
    models = {"reference": reference} | {path: reload(path, "float32").eval() for path in args.models}
    prompt = speed_prompt_ids(tok, args.prompt_tokens)
    for model in models.values():  # warm-up: first calls allocate and pick kernels
        hf_speed(model, prompt[:16], 4, 1)
    decode: dict[str, list[float]] = {name: [] for name in models}
    for r in range(args.rounds):
        for name, model in models.items():
            decode[name].append(hf_speed(model, prompt, args.new_tokens, 1)["decode_tok_s"])
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n.split('/')[-2] if '/' in n else n} {v[-1]:.2f}"
                                                          for n, v in decode.items()))
    print(f"\n{'model':<40} {'params (M)':>10} {'decode tok/s (median)':>22} {'speed-up (median of rounds)':>28}")
    for name, model in models.items():
        ratios = [s / ref for s, ref in zip(decode[name], decode["reference"], strict=True)]
        params = count_parameters(model)[0] / 1e6
        print(f"{name:<40} {params:>10.1f} {statistics.median(decode[name]):>22.2f} "
              f"{statistics.median(ratios):>27.2f}x  (rounds: {', '.join(f'{x:.2f}' for x in ratios)})")


if __name__ == "__main__":
    main()
