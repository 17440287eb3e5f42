"""The command line: one verb table, verbs → modules. No logic of its own."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

# verb -> (module with add_arguments/run, one-line help)
VERBS = {
    "models": ("tuneforge.recipes.models", "list known models; `models import NAME` converts the embedded GGUF once"),
    "inspect": ("tuneforge.recipes.inspect", "architecture, parameters, memory; --attention / --tokens"),
    "prompt-eval": ("tuneforge.recipes.prompt_eval", "score zero-shot / few-shot / chain-of-thought on a task"),
    "finetune": ("tuneforge.recipes.finetune", "LoRA / full / freeze fine-tuning (CONFIG.yaml [key=value ...])"),
    "evaluate": ("tuneforge.recipes.evaluate", "score a model (+ adapter) on a task's dev split"),
    "distill": ("tuneforge.recipes.distill", "knowledge distillation into a smaller student"),
    "quantize": ("tuneforge.recipes.quantize", "int8 (torchao), GGUF F16/Q8_0/Q4_0/K-quants, bitsandbytes NF4/8-bit (CUDA, or CPU with bitsandbytes >= 0.48)"),
    "prune": ("tuneforge.recipes.prune", "magnitude, Wanda, 2:4, block removal (+ recovery)"),
    "compare": ("tuneforge.recipes.compare", "one table: size, speed and quality of several models"),
    "export": ("tuneforge.recipes.export", "merged HF folder, GGUF, Ollama Modelfile, with a parity check"),
    "serve": ("tuneforge.recipes.serve", "OpenAI-compatible server + web chat page"),
    "chat": ("tuneforge.recipes.chat", "chat in the terminal"),
    "deploy": ("tuneforge.recipes.deploy", "write a deploy bundle for docker, k8s, aws, gcp or azure"),
}


def build_parser() -> argparse.ArgumentParser:
    from tuneforge import __version__

    parser = argparse.ArgumentParser(prog="tuneforge", description="From raw data to a deployed, compressed chatbot.")
    parser.add_argument("--version", action="version", version=f"tuneforge {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (module, help_text) in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except ModuleNotFoundError as e:
            if not e.name or not e.name.startswith("tuneforge"):
                raise
            p.set_defaults(_missing=f"`tuneforge {verb}` is not available in this build")
    return parser


def drop_known_import_notices() -> None:
    """Notices printed on every start (peft imports torchao and bitsandbytes) that no user can act on: torch 2.13
    calls torchao's Enum pytree registrations deprecated (pytorch/ao#4848, open upstream); on a machine without
    CUDA torchao's CUDA-only kernels fail to load; and bitsandbytes cannot fetch an optional faster CPU kernel
    from the Hugging Face Hub (the `kernels` package), so it uses its PyTorch kernels, which work offline. On a
    CUDA machine torchao's notice stays visible: there it means something."""
    import logging
    import warnings

    import torch

    logging.getLogger("torch.utils._pytree").addFilter(
        lambda record: "is an Enum subclass and is now natively supported" not in record.getMessage())
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        lambda record: not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward from kernels-community"))
    # transformers' bitsandbytes loading and peft's k-bit preparation still read a property transformers renamed
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    if not torch.cuda.is_available():
        logging.getLogger("torchao").addFilter(lambda record: not record.getMessage().startswith("Failed to load"))


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    drop_known_import_notices()
    # A background launcher may hand us SIGINT ignored; Ctrl-C must still stop training with a checkpoint.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from tuneforge.errors import UserError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return 2
    if getattr(args, "_missing", None):
        print(f"error: {args._missing}", file=sys.stderr)
        return 2
    from tuneforge import runs
    from tuneforge.runs import discard_unstarted_runs

    runs.command_line = ["tuneforge", *(sys.argv[1:] if argv is None else argv)]
    try:
        code = importlib.import_module(args._module).run(args)
    except UserError as e:
        discard_unstarted_runs()
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        discard_unstarted_runs()
        print("\ninterrupted", file=sys.stderr)
        return 130
    except Exception as e:
        discard_unstarted_runs()
        if type(e).__name__ == "Interrupted":
            return 130
        raise
    finally:
        runs.command_line = None  # a later library call in this process is not this command
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
