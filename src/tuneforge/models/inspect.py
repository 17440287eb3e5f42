"""`tuneforge inspect [MODEL]`: architecture, parameters per module type and per block, memory estimates,
tokenisation (`--tokens`) and attention maps (`--attention`, a grid PNG of layers × heads).

The architecture and parameter tables come from a skeleton built on the meta device (no weights are read,
so any size of model is inspected in seconds); only --tokens and --attention load the tokenizer / weights.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.models.attention import (
    attention_maps,
    attention_short_name,
    check_out_path,
    draw_attention,
    parse_layers,
    token_label,
    tokenize,
)

KINDS = ("causal", "seq2seq", "classifier", "encoder")  # what --kind accepts besides "auto"
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1, "int4": 0.5}

# Leaf-module names → (category, projection). Covers Llama/Qwen/Mistral, GPT-2, BERT, T5, BART/Marian.
ATTENTION_NAMES = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "out_proj": "o",
    "query": "q", "key": "k", "value": "v", "q": "q", "k": "k", "v": "v", "o": "o",
    "c_attn": "qkv", "qkv_proj": "qkv", "Wqkv": "qkv", "dense_qkv": "qkv",
}
MLP_NAMES = {"gate_proj", "up_proj", "down_proj", "fc1", "fc2", "wi", "wi_0", "wi_1", "wo", "c_fc", "gate_up_proj", "w1", "w2", "w3"}
HEAD_NAMES = {"lm_head", "classifier", "score", "pooler", "qa_outputs", "cls", "final_logits_bias"}
CROSS_ATTENTION = ("EncDecAttention", "encoder_attn", "crossattention")
BLOCK_RE = re.compile(r"^(?P<prefix>.*?)\.?(?:layers|layer|h|block|blocks)\.(?P<idx>\d+)\.")


# -- architecture -----------------------------------------------------------------------------------------


def load_model_config(model: str | None):
    from transformers import AutoConfig

    from tuneforge.models.registry import resolve_model

    source = resolve_model(model)
    try:
        return AutoConfig.from_pretrained(source), source
    except (OSError, ValueError) as e:
        raise UserError(f"model '{model}': no readable config.json at {source} ({str(e).splitlines()[0]})") from e


def detect_kind(config) -> str:
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    archs = config.architectures or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal"
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "classifier"
    return "encoder"


def auto_classes() -> dict:
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
    )

    return {"causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM,
            "classifier": AutoModelForSequenceClassification, "encoder": AutoModel}


def fits(config, kind: str) -> bool | None:
    """Whether transformers has a `kind` class for this config (None: this transformers cannot tell)."""
    mapping = getattr(auto_classes()[kind], "_model_mapping", None)
    try:
        return type(config) in mapping if mapping is not None else None
    except Exception:  # a private mapping that changed shape
        return None


def kind_mismatch(config, kind: str) -> UserError:
    usable = [k for k in KINDS if k != kind and fits(config, k)]
    choices = f"auto or {', '.join(usable)}" if usable else "auto"
    return UserError(f"--kind {kind} does not fit this model (model_type {config.model_type}); use --kind {choices}")


def build_skeleton(config, kind: str, num_labels: int | None = None):
    """The model with every tensor on the meta device: shapes and tying without memory or file reads."""
    import torch

    cls = auto_classes()[kind]
    if fits(config, kind) is False:
        raise kind_mismatch(config, kind)
    if kind == "classifier" and num_labels is not None:
        config.num_labels = num_labels
    try:
        with torch.device("meta"):
            return cls.from_config(config)
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            raise kind_mismatch(config, kind) from e
        raise UserError(f"--kind {kind}: the model (model_type {config.model_type}) cannot be built from its "
                        f"config.json ({str(e).splitlines()[0]}); try --kind auto") from e


def first_attr(config, *names, default=None):
    for n in names:
        value = getattr(config, n, None)
        if value is not None:
            return value
    return default


def architecture(config, kind: str, model=None) -> dict:
    heads = first_attr(config, "num_attention_heads", "num_heads", "n_head")
    hidden = first_attr(config, "hidden_size", "d_model", "n_embd")
    arch = {
        "model_type": config.model_type,
        "kind": kind,
        "layers": first_attr(config, "num_hidden_layers", "num_layers", "n_layer"),
        "heads": heads,
        "kv_heads": first_attr(config, "num_key_value_heads", default=heads),
        "head_dim": first_attr(config, "head_dim", "d_kv", default=hidden // heads if hidden and heads else None),
        "hidden_size": hidden,
        "intermediate_size": first_attr(config, "intermediate_size", "d_ff", "encoder_ffn_dim", "n_inner",
                                        default=4 * hidden if hidden else None),
        "vocab_size": config.vocab_size,
        "context_length": first_attr(config, "max_position_embeddings", "n_positions"),
        "position_encoding": position_encoding(config),
        "tied_embeddings": tied_embeddings(model) if model is not None else bool(getattr(config, "tie_word_embeddings", False)),
        "activation": first_attr(config, "hidden_act", "feed_forward_proj", "activation_function", "dense_act_fn"),
    }
    if kind == "seq2seq":
        arch["decoder_layers"] = first_attr(config, "num_decoder_layers", "decoder_layers", default=arch["layers"])
        arch["decoder_heads"] = first_attr(config, "decoder_attention_heads", default=heads)
    return arch


def position_encoding(config) -> str:
    if getattr(config, "rope_parameters", None) or getattr(config, "rope_theta", None):
        rope = getattr(config, "rope_parameters", None) or {}
        theta = rope.get("rope_theta") if isinstance(rope, dict) else None
        return f"rotary (theta {theta or config.rope_theta:g})"
    if getattr(config, "relative_attention_num_buckets", None):
        return "relative buckets (no hard length limit)"
    return getattr(config, "position_embedding_type", None) or "learned absolute"


def tied_embeddings(model) -> bool:
    inp, out = model.get_input_embeddings(), model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return out is not None and inp is not None and out.weight is inp.weight


# -- parameters -------------------------------------------------------------------------------------------


def module_category(name: str, module) -> str:
    """embedding | attention.q/k/v/o/qkv | cross_attention.* | mlp | norm | head | other."""
    import torch.nn as nn

    parts = name.split(".")
    leaf = parts[-1]
    if any(p in HEAD_NAMES for p in parts):
        return "head"
    if "norm" in type(module).__name__.lower() or "norm" in leaf.lower() or leaf.startswith("ln"):
        return "norm"
    if isinstance(module, nn.Embedding):
        return "attention.position_bias" if "relative_attention_bias" in leaf else "embedding"
    in_attention = any("attn" in p.lower() or "attention" in p.lower() for p in parts[:-1])
    prefix = "cross_attention" if any(c in name for c in CROSS_ATTENTION) else "attention"
    if leaf in ATTENTION_NAMES and (in_attention or leaf.endswith("_proj") and leaf not in MLP_NAMES):
        return f"{prefix}.{ATTENTION_NAMES[leaf]}"
    if leaf == "dense" and in_attention:  # BERT: attention.output.dense is the output projection
        return f"{prefix}.o"
    if leaf in MLP_NAMES or "mlp" in parts or "intermediate" in parts or "DenseReluDense" in parts or (
        leaf == "dense" and "output" in parts
    ):
        return "mlp"
    return "other"


def block_of(param_name: str, kind: str) -> str | None:
    m = BLOCK_RE.match(param_name)
    if not m:
        return None
    idx = int(m.group("idx"))
    if kind == "seq2seq":
        side = "decoder" if "decoder" in m.group("prefix") else "encoder"
        return f"{side} {idx:>2}"
    return f"block {idx:>2}"


def part_of(param_name: str, category: str) -> str:
    """An encoder-decoder's parts: encoder, decoder, the embedding they share, the head."""
    parts = param_name.split(".")
    if "encoder" in parts:
        return "encoder"
    if "decoder" in parts:
        return "decoder"
    return "head" if category == "head" else "shared embedding"


def parameter_tables(model, kind: str) -> dict:
    """Unique parameters (tied tensors counted once) by category and by transformer block; for an encoder-decoder
    also by part (`by_part`: encoder / decoder / shared embedding / head, with each stack's block count)."""
    seen: set[int] = set()
    by_type: dict[str, int] = defaultdict(int)
    by_block: dict[str, dict[str, int]] = {}
    by_part: dict[str, dict[str, int]] = {}
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            cat = module_category(mod_name or p_name, module)
            if p_name == "final_logits_bias":
                cat = "head"
            n = p.numel()
            by_type[cat] += n
            block = block_of(full, kind)
            if kind == "seq2seq":
                part = by_part.setdefault(part_of(full, cat), {"blocks": 0, "parameters": 0})
                part["parameters"] += n
            if block is not None:
                row = by_block.setdefault(block, defaultdict(int))
                group = cat.split(".")[0]
                row[group] += n
                row["total"] += n
    for buf_name, buf in model.named_buffers():  # e.g. BART's final_logits_bias is a buffer
        if buf_name.endswith("final_logits_bias"):
            by_type["head"] += buf.numel()
            if kind == "seq2seq":
                by_part.setdefault("head", {"blocks": 0, "parameters": 0})["parameters"] += buf.numel()
    total = sum(by_type.values())
    tables = {"total": total, "by_type": dict(by_type), "by_block": {k: dict(v) for k, v in by_block.items()}}
    if kind == "seq2seq":
        for name in by_block:  # "encoder  0", "decoder  1"
            by_part[name.split()[0]]["blocks"] += 1
        order = ["shared embedding", "encoder", "decoder", "head"]
        tables["by_part"] = {k: by_part[k] for k in sorted(by_part, key=order.index)}
    return tables


def lora_trainable(model, r: int) -> int:
    """LoRA on every linear layer inside the blocks ('all-linear'): r × (in + out) per layer."""
    import torch.nn as nn

    total = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module_category(name, module) != "head":
            total += r * (module.in_features + module.out_features)
        elif type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # GPT-2's transposed linear
            total += r * (module.weight.shape[0] + module.weight.shape[1])
    return total


# -- memory -----------------------------------------------------------------------------------------------


def activation_bytes(arch: dict, batch: int, seq: int, act_bytes: float) -> float:
    """Korthikanti et al. 2022 (no recomputation), per layer s·b·h·(34 + 5·a·s/h) bytes at 2-byte
    activations, scaled to `act_bytes`; plus fp32 logits and their gradient, b·s·V·8, for LM heads."""
    s, b, h, a = seq, batch, arch["hidden_size"], arch["heads"]
    layers = arch["layers"] + arch.get("decoder_layers", 0)
    per_layer = s * b * h * (34 + 5 * a * s / h) * act_bytes / 2
    logits = b * s * arch["vocab_size"] * 8 if arch["kind"] in ("causal", "seq2seq") else 0
    return layers * per_layer + logits


def kv_cache_bytes(arch: dict, batch: int, seq: int, dtype_bytes: float) -> float:
    """2 (K and V) × decoder layers × batch × seq × kv heads × head dim × bytes; seq2seq adds the
    cross-attention K/V of an encoder input of the same length."""
    if arch["kind"] in ("encoder", "classifier"):
        return 0.0
    layers = arch.get("decoder_layers", arch["layers"])
    self_kv = 2 * layers * batch * seq * arch["kv_heads"] * arch["head_dim"] * dtype_bytes
    return self_kv * (2 if arch["kind"] == "seq2seq" else 1)


def memory_estimates(arch: dict, total: int, lora_params: int, *, batch: int, seq: int, train_dtype: str) -> dict:
    act_bytes = BYTES[train_dtype] if train_dtype in ("bfloat16", "float16") else 4
    activations = activation_bytes(arch, batch, seq, act_bytes)
    # The KV cache stays in 16-bit when weights are 8/4-bit, and in fp32 only for fp32 weights.
    inference = {d: {"weights": total * b, "kv_cache": kv_cache_bytes(arch, batch, seq, 4 if d == "float32" else 2)}
                 for d, b in BYTES.items()}
    for row in inference.values():
        row["total"] = row["weights"] + row["kv_cache"]
    full = {"weights": 4 * total, "gradients": 4 * total, "adamw_states": 8 * total, "activations": activations}
    lora = {"weights": BYTES[train_dtype] * total + 4 * lora_params, "gradients": 4 * lora_params,
            "adamw_states": 8 * lora_params, "activations": activations}
    for row in (full, lora):
        row["total"] = sum(row.values())
    return {"batch": batch, "seq_len": seq, "train_dtype": train_dtype, "inference": inference,
            "train_full": full, "train_lora": lora, "lora_params": lora_params}



def check_counts(**flags: int | None) -> None:
    """The same rule as `positive_int` for callers of inspect_model; None means 'not given'."""
    for flag, value in flags.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"{flag} {value}: give a whole number of 1 or more")


def inspect_model(
    model: str | None = None,
    *,
    kind: str = "auto",
    num_labels: int | None = None,
    batch_size: int = 1,
    seq_len: int | None = None,
    train_dtype: str = "bfloat16",
    lora_r: int = 16,
    tokens: str | None = None,
    attention: str | None = None,
    layers: str = "all",
    out: str | None = None,
) -> dict:
    """Everything `tuneforge inspect` prints, as a dict; writes the attention PNG when `attention` is set."""
    if train_dtype not in ("bfloat16", "float16", "float32"):
        raise UserError(f"--train-dtype '{train_dtype}': choose bfloat16, float16 or float32")
    if kind != "auto" and kind not in KINDS:
        raise UserError(f"--kind '{kind}': choose auto, {', '.join(KINDS)}")
    check_counts(**{"--batch-size": batch_size, "--seq-len": seq_len, "--lora-r": lora_r, "--num-labels": num_labels})
    short = attention_short_name(model)
    png = (Path(out) if out else Path("runs") / "inspect" / f"{short}-attention.png") if attention is not None else None
    if png is not None:
        check_out_path(png, "--out" if out else "--out (default)")
    config, source = load_model_config(model)
    kind = detect_kind(config) if kind == "auto" else kind
    skeleton = build_skeleton(config, kind, num_labels)
    arch = architecture(config, kind, skeleton)
    params = parameter_tables(skeleton, kind)
    if attention is not None and isinstance(arch["layers"], int) and arch["layers"] > 0:
        parse_layers(layers, arch["layers"])  # a bad --layers is reported before the weights load
    seq = seq_len if seq_len is not None else min(arch["context_length"] or 512, 512)
    report = {
        "model": model or "(embedded default)",
        "source": source,
        "architecture": arch,
        "parameters": params,
        "memory": memory_estimates(arch, params["total"], lora_trainable(skeleton, lora_r), batch=batch_size,
                                   seq=seq, train_dtype=train_dtype),
    }
    report["memory"]["lora_r"] = lora_r
    if tokens is not None:
        from tuneforge.models.loading import load_tokenizer

        report["tokens"] = tokenize(load_tokenizer(model), tokens)
    if attention is not None:
        maps, rows = attention_maps(model, attention, kind)
        picked = parse_layers(layers, maps.shape[0])
        which = "encoder self-attention" if kind == "seq2seq" else "self-attention"
        draw_attention(maps, [token_label(r) for r in rows], png, layers=picked,
                       title=f"{short}: {which}, {len(rows)} tokens, layers × heads")
        report["attention_png"] = str(png)
    return report


# -- printing ---------------------------------------------------------------------------------------------


def human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def gib(n: float) -> str:
    return f"{n / 2**30:.3f} GiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def text_table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    """A plain aligned table for the terminal (inspect, models): text left, numbers right. Reports use
    report.format_table, which writes markdown."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(re.fullmatch(r"[-+0-9.,%]+[KMG]?( GiB)?|-", r[i] or "-") for r in cells) for i in range(len(headers))]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    out = [title] if title else []
    out += [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


def render(report: dict) -> str:
    arch, params, mem = report["architecture"], report["parameters"], report["memory"]
    total = params["total"]
    parts = [f"model: {report['model']}  ({report['source']})"]
    # an encoder-decoder's `layers` and `heads` are its encoder's; the decoder's have rows of their own
    rename = {"layers": "encoder layers", "heads": "encoder heads"} if arch["kind"] == "seq2seq" else {}
    arch_rows = [[rename.get(k, k.replace("_", " ")), "-" if v is None else v] for k, v in arch.items()]
    parts.append(text_table(["architecture", "value"], arch_rows))

    order = ["embedding", "attention.q", "attention.k", "attention.v", "attention.qkv", "attention.o",
             "attention.position_bias", "cross_attention.q", "cross_attention.k", "cross_attention.v",
             "cross_attention.o", "mlp", "norm", "head", "other"]
    by_type = params["by_type"]
    rows = [[k, f"{by_type[k]:,}", f"{100 * by_type[k] / total:.1f}%"] for k in order if by_type.get(k)]
    rows.append(["total (unique tensors)", f"{total:,}", "100.0%"])
    note = " (lm head tied to the embedding: counted once)" if arch["tied_embeddings"] else ""
    parts.append(text_table(["module type", "parameters", "share"], rows, title=f"parameters per module type{note}"))

    if "by_part" in params:
        rows = [[name, p["blocks"] or "-", f"{p['parameters']:,}", f"{100 * p['parameters'] / total:.1f}%"]
                for name, p in params["by_part"].items()]
        parts.append(text_table(["part", "blocks", "parameters", "share"], rows,
                                  title="parameters per part (encoder reads the input, decoder writes the output)"))

    groups = ["attention", "cross_attention", "mlp", "norm", "other"]
    used = [g for g in groups if any(b.get(g) for b in params["by_block"].values())]
    rows = [[name] + [f"{b.get(g, 0):,}" for g in used] + [f"{b['total']:,}"] for name, b in params["by_block"].items()]
    if rows:
        parts.append(text_table(["block"] + used + ["total"], rows, title="parameters per block"))

    b, s = mem["batch"], mem["seq_len"]
    rows = [[d, gib(r["weights"]), gib(r["kv_cache"]), gib(r["total"])] for d, r in mem["inference"].items()]
    parts.append(text_table(
        ["weights dtype", "weights", "KV cache", "total"], rows,
        title=f"inference memory at batch {b} × {s} tokens (KV cache = 2 × layers × batch × seq × kv heads × head dim × bytes; "
              "cache kept in bf16 for 8/4-bit weights)"))
    full, lora = mem["train_full"], mem["train_lora"]
    keys = ["weights", "gradients", "adamw_states", "activations", "total"]
    rows = [[k.replace("_", " "), gib(full[k]), gib(lora[k])] for k in keys]
    parts.append(text_table(
        ["training", "full fine-tune", f"LoRA r={mem['lora_r']} ({human(mem['lora_params'])} params)"], rows,
        title=f"training memory at batch {b} × {s} tokens, {mem['train_dtype']} activations\n"
              "  full: fp32 weights 4P + grads 4P + AdamW m,v 8P; LoRA: base weights in the train dtype + 16 bytes per LoRA param\n"
              "  activations (Korthikanti et al. 2022, no recomputation): layers × s·b·h·(34 + 5·a·s/h) × bytes/2"
              " + LM logits and their grad b·s·V·8; a rough upper bound"))
    if "tokens" in report:
        toks = report["tokens"]
        rows = [[t["index"], t["id"], t["piece"], (t["text"].replace(" ", "␣") if t["text"] else "")
                 + (f"  (bytes of one letter split: piece {t['part']})" if t.get("part") else "") + ("  [special]" if t["special"] else "")]
                for t in toks]
        chars = sum(len(t["new"]) for t in toks)
        parts.append(text_table(["#", "id", "vocab entry", "text it covers"], rows,
                                  title=f"tokens: {len(toks)} for {chars} characters"))
    if "attention_png" in report:
        parts.append(f"attention maps: {report['attention_png']}")
    return "\n\n".join(parts)


