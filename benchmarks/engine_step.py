"""The transformers engine's decode step, as its scheduler runs it (left-padded rows, positions, attention mask,
one new token a row): plain PyTorch layers with transformers' DynamicCache (what the engine ran before) against
oneDNN-packed layers with kv_room's in-place cache (what it runs now), both models in one process, each
round timing every arm in turn.

    python benchmarks/engine_step.py                         # embedded model, bf16 where the CPU has it
    python benchmarks/engine_step.py --dtype float32 --rounds 9

Prints the median and fastest ms per step of each arm, the median ratio, and whether the arms' greedy tokens
are equal.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=40, help="decode steps timed per arm and round")
    p.add_argument("--shapes", default="1x60,1x300,8x60,8x300", help="rows x context tokens")
    args = p.parse_args()

    import torch
    from transformers import DynamicCache

    from tuneforge.models import load_model
    from tuneforge.models.dtypes import cpu_has_bf16
    from tuneforge.models.packed import pack_linear_weights
    from tuneforge.serve.engines.kv_room import roomy_cache
    from tuneforge.serve.engines.transformers import cache_argument

    plain, _ = load_model(args.model, dtype=args.dtype, device="cpu")
    packed, _ = load_model(args.model, dtype=args.dtype, device="cpu")
    print(f"{args.model}, {plain.dtype}, {torch.get_num_threads()} threads, avx512_bf16: {cpu_has_bf16()}; "
          f"packed {pack_linear_weights(packed)} linear layers")
    arms = {"plain + DynamicCache": (plain, lambda: DynamicCache(config=plain.config)),
            "packed + kv_room": (packed, lambda: roomy_cache(packed.config))}

    def run(model, make_cache, rows: int, context: int) -> tuple[float, list]:
        arg = cache_argument(model)  # `cache` or `past_key_values`, as the engine passes it
        torch.manual_seed(0)
        ids = torch.randint(0, 1000, (rows, context))
        mask = torch.ones_like(ids)
        mask[0, : context // 4] = 0  # a shorter prompt, left-padded
        tokens = []
        with torch.inference_mode():
            cache = make_cache()
            out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                        use_cache=True, logits_to_keep=1, **{arg: cache})
            last = out.logits[:, -1].argmax(-1, keepdim=True)
            start = time.perf_counter()
            for _ in range(args.steps):
                positions = mask.sum(-1, keepdim=True)
                mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=1)
                out = model(input_ids=last, attention_mask=mask, position_ids=positions, use_cache=True,
                            **{arg: cache})
                last = out.logits[:, -1].argmax(-1, keepdim=True)
                tokens.append(last[:, 0].tolist())
        return (time.perf_counter() - start) / args.steps * 1000, tokens

    for shape in args.shapes.split(","):
        rows, context = (int(x) for x in shape.split("x"))
        times = {name: [] for name in arms}
        answers = {}
        for model, make in arms.values():  # warm-up
            run(model, make, rows, 8)
        for _ in range(args.rounds):
            for name, (model, make) in arms.items():
                ms, answers[name] = run(model, make, rows, context)
                times[name].append(ms)
        a, b = (times[n] for n in arms)
        ratios = statistics.median(x / y for x, y in zip(a, b, strict=True))
        same = len({str(t) for t in answers.values()}) == 1
        print(f"{rows} rows x {context} tokens: " + "; ".join(
            f"{n} median {statistics.median(t):.1f} ms (fastest {min(t):.1f})" for n, t in times.items())
            + f"; speed-up {ratios:.2f}x; greedy tokens equal: {same}", flush=True)


if __name__ == "__main__":
    main()
