"""Load a model (and optionally a LoRA adapter) with a sensible dtype."""

from __future__ import annotations

import functools
import re
from contextlib import contextmanager
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.models.registry import resolve_model

DTYPES = ("auto", "bfloat16", "float16", "float32")


@functools.cache
def cpu_has_bf16() -> bool:
    """True where the CPU runs bf16 matmuls natively (AVX512-BF16 or AMX); elsewhere bf16 is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(name: str = "auto", device: str | None = None):
    import torch

    if name not in DTYPES:
        raise UserError(f"dtype '{name}' is not one of {', '.join(DTYPES)}")
    if name != "auto":
        return getattr(torch, name)
    device = device or default_device()
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(model: str | None = None):
    from transformers import AutoTokenizer

    source = resolve_model(model)
    tok = AutoTokenizer.from_pretrained(source)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


SEQ2SEQ_VERBS = "Encoder-decoder models (T5, BART, Marian) run through finetune, evaluate and inspect."


def model_config(model: str | None, source=None):
    """The model's config.json, read without the weights."""
    from transformers import AutoConfig

    source = source or resolve_model(model)
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise UserError(f"model '{model}' could not be loaded from {source}: {str(e).splitlines()[0]}") from e


def model_kind(model: str | None, source=None) -> str:
    """'seq2seq' when the model's config says is_encoder_decoder (T5, BART, Marian), else 'causal'; read from
    config.json alone, so a recipe is checked before minutes of loading."""
    return "seq2seq" if getattr(model_config(model, source), "is_encoder_decoder", False) else "causal"


def load_model(
    model: str | None = None,
    *,
    dtype: str = "auto",
    adapter: str | None = None,
    device: str | None = None,
    kind: str = "causal",
    num_labels: int | None = None,
    quantization: str | None = None,
):
    """Return (model, tokenizer). `kind`: causal | seq2seq | classifier, or auto (seq2seq when the model's config
    says is_encoder_decoder, else causal). `quantization`: bnb_8bit | bnb_nf4."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
    )

    source = resolve_model(model)
    config = model_config(model, source)
    found = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
    if kind == "auto":
        kind = found
    elif kind == "causal" and found == "seq2seq":  # BART would load as its decoder alone, the encoder dropped
        raise UserError(f"model '{model}' is an encoder-decoder model ({config.model_type}); this command runs "
                        f"decoder-only models. {SEQ2SEQ_VERBS}")
    device = device or default_device()
    torch_dtype = pick_dtype(dtype, device)
    cls = {"causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM, "classifier": AutoModelForSequenceClassification}[kind]
    extra = {"num_labels": num_labels} if kind == "classifier" and num_labels else {}
    if quantization:
        from tuneforge.quant.bnb import bnb_load_arguments

        extra |= bnb_load_arguments(quantization, device, compute_dtype=torch_dtype)
    try:
        net = cls.from_pretrained(source, dtype=torch_dtype, **extra)
    except OSError as e:
        raise UserError(f"model '{model}' could not be loaded from {source}: {str(e).splitlines()[0]}") from e
    except ImportError as e:  # e.g. a quantized folder whose library (bitsandbytes, torchao) is missing or too old
        raise UserError(f"model '{model}' needs a package to load: {str(e).splitlines()[0]}") from e
    tok = load_tokenizer(model)
    from tuneforge.quant.bnb import skip_unfit_cpu_repacking

    skip_unfit_cpu_repacking(net)  # a saved bitsandbytes folder is quantized while it loads
    if adapter:
        net = attach_adapter(net, adapter)
    if not quantization:  # device_map placed bitsandbytes' weights while they were quantized
        net.to(device)
    net.eval()
    return net, tok


def attach_adapter(net, adapter: str):
    from peft import PeftModel

    path = Path(adapter)
    if not (path / "adapter_config.json").exists():
        problem = "has no adapter_config.json" if path.exists() else "does not exist"
        raise UserError(f"adapter '{adapter}' {problem}: pass a run's adapter/ folder{recipe_hint(path)}")
    with adapter_fits(adapter):
        return PeftModel.from_pretrained(net, str(path))


@contextmanager
def adapter_fits(adapter: str | Path):
    """peft's shape or module-name failure becomes one message: the adapter belongs to another base model."""
    try:
        yield
    except (RuntimeError, ValueError) as e:
        text = str(e)
        if "size mismatch" not in text and "not found in the base model" not in text:
            raise
        import json

        config = Path(adapter) / "adapter_config.json"
        base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path") if config.exists() else None
        raise UserError(f"adapter '{adapter}' was trained on another base model"
                        + (f" ({base})" if base else "") + f" and does not fit this one ({_mismatch_detail(text)}); "
                        "pass the model it was trained on as `model`, or an adapter trained on this model") from None


def _mismatch_detail(text: str) -> str:
    found = re.search(r"size mismatch for (\S+): copying a param with shape torch.Size\((\[[^\]]*\])\) from checkpoint, "
                      r"the shape in current model is torch.Size\((\[[^\]]*\])\)", text)
    if found:
        return f"{found.group(1)} is {found.group(2)} in the adapter, {found.group(3)} in this model"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else text)[:200]


def recipe_hint(adapter: Path, recipes: Path = Path("recipes")) -> str:
    """', or make this one first: `tuneforge finetune recipes/x.yaml` writes runs/x/adapter', or ''."""
    made_by = recipe_that_writes(adapter, recipes)
    return f", or make this one first: {made_by}" if made_by else ""


def recipe_that_writes(folder: Path, recipes: Path = Path("recipes")) -> str | None:
    """For runs/<name>/adapter (or /model): the shipped recipe whose `name:` is <name> and that writes that
    folder, as "`tuneforge VERB recipes/x.yaml` writes runs/<name>/adapter"."""
    if folder.name not in ("adapter", "model") or not recipes.is_dir():
        return None
    run_name = folder.parent.name
    for recipe in sorted(recipes.glob("*.yaml")):
        text = recipe.read_text(encoding="utf-8")
        if re.search(rf"^name:\s*{re.escape(run_name)}\s*(#.*)?$", text, re.M):
            found = re.search(rf"tuneforge (\w+) {re.escape(recipe.as_posix())}", text)
            verb = found.group(1) if found else "finetune"
            method = re.search(r"^method:\s*(\w+)", text, re.M)
            lora = verb == "finetune" and (method is None or method.group(1) in ("lora", "qlora"))
            if folder.name != ("adapter" if lora else "model"):  # the recipe writes the other folder
                return None
            return f"`tuneforge {verb} {recipe.as_posix()}` writes {folder.as_posix()}"
    return None
