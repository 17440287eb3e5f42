"""The transformers engine's decode step, as its scheduler runs it (left-padded rows, positions, attention mask,
one new token a row), three ways in one process, each round timing every arm in turn: plain PyTorch layers with
transformers' DynamicCache and forward (what the engine ran first); oneDNN-packed layers with kv_room's in-place
cache; and those with the lean decode step (lean_decode.py: fused q/k/v and gate/up products, few ops), what the
engine runs now on Llama-architecture models.

    python benchmarks/engine_step.py                         # embedded model, bf16 where the CPU has it
    python benchmarks/engine_step.py --dtype float32 --rounds 9

    python benchmarks/engine_step.py --compile               # and the lean step compiled (serve --compile)

Prints the median and fastest ms per step of each arm, the median ratio of the first arm to each other, and whether
each arm's greedy tokens equal the first's.
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
    p.add_argument("--compile", action="store_true",
                   help="add the lean step compiled by inductor (serve --compile; minutes of compiling first)")
    args = p.parse_args()

    import torch
    from transformers import DynamicCache

    from tuneforge.generation import cache_kwarg
    from tuneforge.models import load_model
    from tuneforge.models.dtypes import cpu_has_bf16
    from tuneforge.models.packed import pack_linear_weights
    from tuneforge.serve.engines.kv_room import roomy_cache
    from tuneforge.serve.engines.lean_decode import lean_decoder

    plain, _ = load_model(args.model, dtype=args.dtype, device="cpu")
    packed, _ = load_model(args.model, dtype=args.dtype, device="cpu")
    print(f"{args.model}, {plain.dtype}, {torch.get_num_threads()} threads, avx512_bf16: {cpu_has_bf16()}; "
          f"packed {pack_linear_weights(packed)} linear layers")
    lean = lean_decoder(packed)
    arms = {"plain + DynamicCache": (plain, lambda: DynamicCache(config=plain.config), None),
            "packed + kv_room": (packed, lambda: roomy_cache(packed.config), None)}
    if lean is not None:
        arms["packed + kv_room + lean step"] = (packed, lambda: roomy_cache(packed.config), lean)
    if lean is not None and args.compile:
        compiled = lean_decoder(packed)
        start = time.perf_counter()
        with torch.inference_mode():
            compiled.compile()
        print(f"compiled the lean step in {time.perf_counter() - start:.0f} s")
        arms["+ compiled step"] = (packed, lambda: roomy_cache(packed.config), compiled)

    def run(model, make_cache, lean, rows: int, context: int) -> tuple[float, list]:
        arg = cache_kwarg(model)  # `cache` or `past_key_values`, as the engine passes it
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
                if lean is not None:
                    logits = lean(last, mask, positions, cache)
                else:
                    logits = model(input_ids=last, attention_mask=mask, position_ids=positions, use_cache=True,
                                   **{arg: cache}).logits[:, -1]
                last = logits.argmax(-1, keepdim=True)
                tokens.append(last[:, 0].tolist())
        return (time.perf_counter() - start) / args.steps * 1000, tokens

    for shape in args.shapes.split(","):
        rows, context = (int(x) for x in shape.split("x"))
        times = {name: [] for name in arms}
        answers = {}
        for model, make, lean_step in arms.values():  # warm-up
            run(model, make, lean_step, rows, 8)
        for _ in range(args.rounds):
            for name, (model, make, lean_step) in arms.items():
                ms, answers[name] = run(model, make, lean_step, rows, context)
                times[name].append(ms)
        first, *others = arms
        speedups = "; ".join(f"{n}: {statistics.median(x / y for x, y in zip(times[first], times[n], strict=True)):.2f}x"
                             for n in others)
        same = ", ".join(f"{n} {'yes' if answers[n] == answers[first] else 'no'}" for n in others)
        print(f"{rows} rows x {context} tokens: " + "; ".join(
            f"{n} median {statistics.median(t):.1f} ms (fastest {min(t):.1f})" for n, t in times.items())
            + f"; speed-up over the first: {speedups}; greedy tokens equal to the first's: {same}", flush=True)


if __name__ == "__main__":
    main()
