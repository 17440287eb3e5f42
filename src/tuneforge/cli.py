"""The command line: one verb table, verbs → modules. No logic of its own."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from tuneforge import cli_args

# verb -> (module with run(args), one-line help, the cli_args function that adds its flags). A verb's module
# (torch and the rest) is imported only to run it; its flags come from cli_args, so --help stays light.
VERBS = {
    "models": ("tuneforge.recipes.models", "list known models; `models import NAME` converts the embedded GGUF once", cli_args.models),
    "inspect": ("tuneforge.recipes.inspect", "architecture, parameters, memory; --attention / --tokens", cli_args.inspect),
    "prompt-eval": ("tuneforge.recipes.prompt_eval", "score zero-shot / few-shot / chain-of-thought on a task", cli_args.recipe),
    "finetune": ("tuneforge.recipes.finetune", "LoRA / full / freeze fine-tuning (CONFIG.yaml [key=value ...])", cli_args.recipe),
    "evaluate": ("tuneforge.recipes.evaluate", "score a model (+ adapter) on a task's dev split", cli_args.recipe),
    "distill": ("tuneforge.recipes.distill", "knowledge distillation into a smaller student", cli_args.recipe),
    "quantize": ("tuneforge.recipes.quantize", "int8 (torchao), GGUF F16/Q8_0/Q4_0/K-quants, bitsandbytes NF4/8-bit (CUDA, or CPU with bitsandbytes >= 0.48)", cli_args.recipe),
    "prune": ("tuneforge.recipes.prune", "magnitude, Wanda, 2:4, block removal (+ recovery)", cli_args.recipe),
    "continual": ("tuneforge.recipes.continual", "train on task after task; the ledger of what each stage cost, and the methods that keep old skills", cli_args.recipe),
    "compare": ("tuneforge.recipes.compare", "one table: size, speed and quality of several models", cli_args.recipe),
    "export": ("tuneforge.recipes.export", "merged HF folder, GGUF, Ollama Modelfile, with a parity check", cli_args.recipe),
    "serve": ("tuneforge.recipes.serve", "OpenAI-compatible server + web chat page", cli_args.serve),
    "chat": ("tuneforge.recipes.chat", "chat in the terminal", cli_args.chat),
    "deploy": ("tuneforge.recipes.deploy", "write a deploy bundle for docker, k8s, aws, gcp or azure", cli_args.deploy),
    "runs": ("tuneforge.recipes.runs", "a table of the run folders (status, before -> after, speed); "
             "`runs compare A B ...` diffs their configs and metrics", cli_args.runs),
}


class VerbParser(argparse.ArgumentParser):
    """A verb's parser that adds its flags the first time it parses or shows help, so `tuneforge --help` and
    every other verb never import what this verb's flags need."""

    def __init__(self, *args, flags=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._flags = flags

    def _add_flags(self) -> None:
        flags, self._flags = self._flags, None
        if flags is None:
            return
        try:
            flags(self)
        except ModuleNotFoundError as e:
            if not e.name or not e.name.startswith("tuneforge"):
                raise
            self.set_defaults(_missing=f"`tuneforge {self.prog.split()[-1]}` is not available in this build")
        cli_args.verbose(self)

    def parse_known_args(self, args=None, namespace=None):
        self._add_flags()
        return super().parse_known_args(args, namespace)

    def format_usage(self):
        self._add_flags()
        return super().format_usage()

    def format_help(self):
        self._add_flags()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    from tuneforge import __version__

    parser = argparse.ArgumentParser(prog="tuneforge", description="From raw data to a deployed, compressed chatbot.")
    parser.add_argument("--version", action="version", version=f"tuneforge {__version__}")
    cli_args.verbose(parser, top=True)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=VerbParser)
    for verb, (module, help_text, flags) in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text, flags=flags)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # A background launcher may hand us SIGINT ignored; Ctrl-C must still stop training with a checkpoint.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return 2
    if getattr(args, "_missing", None):
        print(f"error: {args._missing}", file=sys.stderr)
        return 2
    from tuneforge import runs
    from tuneforge.errors import UserError
    from tuneforge.quiet import quiet
    from tuneforge.runs import end_stopped_command

    runs.command_line = ["tuneforge", *(sys.argv[1:] if argv is None else argv)]
    runs.verb = args.verb
    try:
        with quiet(args.verbose):
            try:
                module = importlib.import_module(args._module)
            except ModuleNotFoundError as e:
                if not e.name or not e.name.startswith("tuneforge"):
                    raise
                print(f"error: `tuneforge {args.verb}` is not available in this build", file=sys.stderr)
                return 2
            code = module.run(args)
    except UserError as e:
        end_stopped_command(e)  # failed.json in each run folder it kept
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        end_stopped_command(None)  # interrupted.json
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tuneforge runs | head`: the reader left; Python's own advice, no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:
        if type(e).__name__ == "Interrupted":  # Ctrl-C in training, after its checkpoint was saved
            end_stopped_command(None)
            return 130
        end_stopped_command(e)
        raise
    finally:
        runs.command_line = runs.verb = None  # a later library call in this process is not this command
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
