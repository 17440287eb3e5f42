"""`tuneforge deploy --target TARGET --out DIR`: write a deploy bundle for one platform."""

from __future__ import annotations

import argparse

from tuneforge.deploy.bundle import deploy

__all__ = ["run", "deploy"]


def run(args: argparse.Namespace) -> int:
    out = deploy(args.target, args.out, args.model, args.adapter, gpu=args.gpu, bake=args.bake,
                 name=args.name, image=args.image, engine=args.engine)
    print(f"wrote {args.target} bundle to {out}; next steps: {out / 'README.md'}")
    return 0
