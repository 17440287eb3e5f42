"""`tuneforge deploy --target TARGET --out DIR`: write a deploy bundle for one platform."""

from __future__ import annotations

import argparse

from tuneforge.deploy.bundle import ENGINES, TARGETS, deploy

__all__ = ["add_arguments", "run", "deploy"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", required=True, choices=TARGETS, help="platform the bundle is for")
    parser.add_argument("--out", required=True, help="bundle folder to write: a new or empty folder, or a bundle an earlier deploy wrote "
                        "(which is replaced)")
    parser.add_argument("--model", default=None,
                        help="registry name, HF folder (e.g. a merged export), .gguf file or hub id; default: the embedded model")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                        help="LoRA adapter folder served under NAME (repeatable)")
    parser.add_argument("--gpu", action="store_true", help="CUDA image with the vLLM engine and GPU resources")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--bake", dest="bake", action="store_true", default=True,
                       help="copy the model into the image (default)")
    where.add_argument("--mount", dest="bake", action="store_false",
                       help="keep the model out of the image: a volume, S3 model.tar.gz, bucket or model asset")
    parser.add_argument("--name", default="tuneforge-chat", help="service/endpoint name (lower-case DNS label)")
    parser.add_argument("--image", default=None, help="image reference written into the manifests (default NAME:VERSION)")
    parser.add_argument("--engine", default=None, choices=ENGINES,
                        help="serving engine (default: vllm with --gpu, llamacpp for .gguf, transformers otherwise)")


def run(args: argparse.Namespace) -> int:
    out = deploy(args.target, args.out, args.model, args.adapter, gpu=args.gpu, bake=args.bake,
                 name=args.name, image=args.image, engine=args.engine)
    print(f"wrote {args.target} bundle to {out}; next steps: {out / 'README.md'}")
    return 0
