"""Every verb's command-line flags, apart from the verbs themselves: building a parser imports no verb module
(they pull in torch), only the light modules that hold the constants a verb's flags need, and cli.py adds a
verb's flags only when that verb is parsed or asked for --help."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse type for counts (batch size, sequence length, LoRA rank, labels): a whole number of 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number; give 1 or more") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small; give a whole number of 1 or more")
    return value


def sampling_arg(field: str):
    """An argparse `type` that refuses an out-of-range value, so the parser names the flag and exits 2."""
    from tuneforge.serve.settings import SAMPLING

    parse, accepts, rule = SAMPLING[field]

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {rule}") from None
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    convert.__name__ = field
    return convert


def models(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="{list,import}")
    listing = sub.add_parser("list", help="known models and whether they are installed / imported (the default)")
    imp = sub.add_parser("import", help="convert a packaged model into a Hugging Face folder once")
    imp.add_argument("name", help="a known model name, e.g. smollm2-135m-instruct")
    imp.add_argument("--force", action="store_true", help="convert again even if the folder exists")
    for action in (listing, imp):
        verbose(action)


def inspect(parser: argparse.ArgumentParser) -> None:
    from tuneforge.models.inspect import KINDS

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


def recipe(parser: argparse.ArgumentParser) -> None:
    """The verbs driven by a recipe YAML: prompt-eval, finetune, evaluate, distill, quantize, prune, compare, export."""
    parser.add_argument("config", nargs="?", help="a recipe YAML (see recipes/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=1e-4 data.train.limit=500")


def serve(parser: argparse.ArgumentParser) -> None:
    from tuneforge.serve.settings import API_KEY_ENV, DTYPES, ENGINES, ServeConfig

    d = ServeConfig()
    parser.add_argument("model", nargs="?", default=None,
                        help="registry name, HF folder or id, or a .gguf file (default: the embedded model)")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                        help="serve a LoRA adapter under NAME (repeatable); requests pick it with \"model\": NAME")
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="auto: llamacpp for a .gguf, vllm when installed with a GPU, else transformers")
    parser.add_argument("--served-model-name", default=None, help="the base model's id in /v1/models")
    parser.add_argument("--dtype", default=d.dtype, choices=DTYPES, help="weights dtype (transformers, vllm)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--host", default=d.host, help="bind address (default 127.0.0.1; 0.0.0.0 for all interfaces)")
    parser.add_argument("--port", type=int, default=None, help=f"TCP port (default: $PORT when set, else {d.port})")
    parser.add_argument("--api-key-file", default=None,
                        help=f"file holding the API key clients must send as Bearer (or set ${API_KEY_ENV})")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="allow browser calls from ORIGIN, e.g. http://localhost:3000 (repeatable)")
    parser.add_argument("--max-prompt-tokens", type=int, default=d.max_prompt_tokens)
    parser.add_argument("--max-tokens", type=int, default=d.max_tokens, help="cap on a request's max_tokens")
    parser.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    parser.add_argument("--queue-size", type=int, default=d.queue_size,
                        help="requests admitted at once (running + waiting); more get 429")
    parser.add_argument("--max-batch", type=int, default=d.max_batch, help="sequences decoded together per step")
    parser.add_argument("--n-threads", type=int, default=None, help="llamacpp: CPU threads (default: all cores)")
    parser.add_argument("--n-ctx", type=int, default=d.n_ctx, help="llamacpp: context window of each request")
    parser.add_argument("--parallel", type=int, default=d.parallel,
                        help=f"llamacpp: requests decoded together (default {d.parallel}; KV cache = parallel x n-ctx)")
    parser.add_argument("--eager", action="store_true",
                        help="vllm: run eagerly, not compiled (starts ~4x faster on a small CPU, decodes slower)")
    parser.add_argument("--compile", action="store_true",
                        help="transformers: compile the decode step with inductor (a C++ compiler; Llama, Qwen2, Mistral; "
                             "no adapters): minutes more to start, faster decoding")
    parser.add_argument("--log-level", default=d.log_level, choices=["critical", "error", "warning", "info", "debug"])


def chat(parser: argparse.ArgumentParser) -> None:
    from tuneforge.serve.settings import DTYPES, ENGINES

    parser.add_argument("model", nargs="?", default=None,
                        help="registry name, HF folder or id, or a .gguf file (default: the embedded model)")
    parser.add_argument("--adapter", default=None, metavar="PATH", help="a LoRA adapter folder (a run's adapter/)")
    parser.add_argument("--engine", choices=ENGINES, default="auto")
    parser.add_argument("--system", default=None, help="system prompt to start with")
    parser.add_argument("--temperature", type=sampling_arg("temperature"), default=0.7, help="0 = greedy")
    parser.add_argument("--top-p", type=sampling_arg("top_p"), default=0.95, help="nucleus sampling, in (0, 1]")
    parser.add_argument("--max-tokens", type=sampling_arg("max_tokens"), default=512, help="longest reply in tokens")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="weights dtype (transformers, vllm)")


def deploy(parser: argparse.ArgumentParser) -> None:
    from tuneforge.deploy.bundle import ENGINES, TARGETS

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


def runs(parser: argparse.ArgumentParser) -> None:
    from tuneforge.runs import SORT_KEYS

    parser.usage = "tuneforge runs [DIR] [--task T] [--verb V] [--status S] [--sort KEY] [--all]\n" \
                   "       tuneforge runs compare RUN RUN [RUN ...] [--dir DIR] [--out PNG]"
    parser.add_argument("what", nargs="*", metavar="DIR | compare RUN ...",
                        help="the folder of run folders (default: runs); or `compare` and two or more runs, each a "
                             "run name in --dir or a run folder's path")
    parser.add_argument("--dir", default=None, help="the folder of run folders (default: runs)")
    parser.add_argument("--task", dest="only_task", metavar="TASK", default=None,
                        help="only runs of this task (a continual run: any of its stages)")
    parser.add_argument("--verb", dest="only_verb", metavar="VERB", default=None, help="only runs of this verb, e.g. finetune")
    parser.add_argument("--status", dest="only_status", metavar="STATUS", default=None,
                        help="only runs with this status: complete, interrupted, failed, running, incomplete, unreadable")
    parser.add_argument("--sort", default="started", metavar="KEY",
                        help=f"order by one of {', '.join(SORT_KEYS)} (default: started); numbers largest "
                             "first, text A to Z; a leading - (--sort=-time) or --reverse turns it round")
    parser.add_argument("--reverse", action="store_true", help="the opposite order")
    parser.add_argument("--all", action="store_true",
                        help="also list a continual run's strategy folders (runs/X/sequential, ...) as runs")
    parser.add_argument("--out", metavar="PNG", default=None,
                        help="compare: the chart's PNG path (default: runs-compare.png here)")


VERBOSE_HELP = "also show other libraries' warnings, log lines and progress bars"


def verbose(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """`--verbose`, before or after the verb. Below the top it is only set when given, so a verb's parser
    cannot reset a `tuneforge --verbose VERB` back to False."""
    parser.add_argument("--verbose", action="store_true", default=False if top else argparse.SUPPRESS,
                        help=VERBOSE_HELP)
