"""Load a model (and optionally a LoRA adapter) with a sensible dtype."""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.models.adapters import ADAPTER_CONFIG, check_adapter
from tuneforge.models.dtypes import default_device, pick_dtype
from tuneforge.models.registry import resolve_model


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
        from tuneforge.models.bnb import bnb_load_arguments

        extra |= bnb_load_arguments(quantization, device, compute_dtype=torch_dtype)
    try:
        net = cls.from_pretrained(source, dtype=torch_dtype, **extra)
    except OSError as e:
        raise UserError(f"model '{model}' could not be loaded from {source}: {str(e).splitlines()[0]}") from e
    except ImportError as e:  # e.g. a quantized folder whose library (bitsandbytes, torchao) is missing or too old
        raise UserError(f"model '{model}' needs a package to load: {str(e).splitlines()[0]}") from e
    tok = load_tokenizer(model)
    from tuneforge.models.bnb import skip_unfit_cpu_repacking

    skip_unfit_cpu_repacking(net)  # a saved bitsandbytes folder is quantized while it loads
    if adapter:
        net = attach_adapter(net, adapter)
    if not quantization:  # device_map placed bitsandbytes' weights while they were quantized
        net.to(device)
    net.eval()
    return net, tok


def attach_adapter(net, adapter: str, *, trainable: bool = False):
    from peft import PeftModel

    path = check_adapter(adapter)
    with adapter_fits(adapter):
        return PeftModel.from_pretrained(net, str(path), is_trainable=trainable)


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

        config = Path(adapter) / ADAPTER_CONFIG
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


def load_merged(model_name: str | None, adapter: str | None, dtype: str):
    """(model, tokenizer) with any LoRA adapter merged in: compression works on plain weights."""

    model, tok = load_model(model_name, dtype=dtype, adapter=adapter)
    if adapter:
        model = model.merge_and_unload()
    model.eval()
    return model, tok


def reload(folder: Path, dtype: str):
    from transformers import AutoModelForCausalLM

    from tuneforge.models.dtypes import pick_dtype

    return AutoModelForCausalLM.from_pretrained(folder, dtype=pick_dtype(dtype))
