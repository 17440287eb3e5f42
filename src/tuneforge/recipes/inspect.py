"""`tuneforge inspect [MODEL]`: architecture, parameters per module and block, memory estimates, tokens and
attention maps."""

from __future__ import annotations

from tuneforge.errors import UserError
from tuneforge.models.inspect import inspect_model, render


def run(args) -> int:
    given = [flag for flag, value in (("--out", args.out), ("--layers", args.layers != "all" and args.layers)) if value]
    if given and args.attention is None:  # they only shape the attention PNG; silently ignoring them misleads
        raise UserError(f"{' and '.join(given)} only apply with --attention TEXT; add --attention or drop them")
    report = inspect_model(
        args.model, kind=args.kind, num_labels=args.num_labels, batch_size=args.batch_size, seq_len=args.seq_len,
        train_dtype=args.train_dtype, lora_r=args.lora_r, tokens=args.tokens, attention=args.attention,
        layers=args.layers, out=args.out,
    )
    print(render(report))
    return 0
