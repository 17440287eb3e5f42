"""`tuneforge inspect [MODEL]`: architecture, parameters per module and block, memory estimates, tokens and
attention maps."""

from __future__ import annotations

import argparse

from tuneforge.errors import UserError
from tuneforge.models.inspect import KINDS, inspect_model, render


def positive_int(text: str) -> int:
    """argparse type for counts (batch size, sequence length, LoRA rank, labels): a whole number of 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number; give 1 or more") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small; give a whole number of 1 or more")
    return value


def add_arguments(parser) -> None:
    parser.add_argument("model", nargs="?", default=None, help="registry name, folder or hub id (default: the embedded model)")
    parser.add_argument("--kind", default="auto", choices=["auto", *KINDS],
                        help="which head to count (auto: from config.json)")
    parser.add_argument("--num-labels", type=positive_int, default=None, help="--kind classifier: size of the head")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="batch for the memory estimates")
    parser.add_argument("--seq-len", type=positive_int, default=None, help="tokens per row for the memory estimates (default: min(context, 512))")
    parser.add_argument("--train-dtype", default="bfloat16", help="activation / frozen-weight dtype for the training estimate")
    parser.add_argument("--lora-r", type=positive_int, default=16, help="LoRA rank for the training estimate (all linear layers)")
    parser.add_argument("--tokens", metavar="TEXT", default=None, help="show how TEXT is tokenised")
    parser.add_argument("--attention", metavar="TEXT", default=None, help="draw attention maps for TEXT as a PNG grid")
    parser.add_argument("--layers", default="all", help="--attention: 'all' or layer numbers, e.g. 0,15,29")
    parser.add_argument("--out", default=None, help="--attention: PNG path (default runs/inspect/<model>-attention.png)")


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
