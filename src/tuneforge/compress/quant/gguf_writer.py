"""Write a Hugging Face Llama-architecture model to GGUF (F32, F16, Q8_0, Q4_1, Q4_0) with the `gguf` package.

The file carries what llama.cpp needs to run the model as a chat model: hyper-parameters, the BPE
tokenizer (tokens, merges, token types, special ids) and the chat template. Quantization runs in
Python (gguf.quants), so no llama.cpp binary is needed to write the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tuneforge.errors import UserError
from tuneforge.fileio import atomic_file
from tuneforge.models.adapters import is_adapter_model

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_1", "q4_0")
SUPPORTED_ARCHS = ("llama",)
# tokenizer.json pre-tokenizer layouts llama.cpp knows, by the name it gives them (tokenizer.ggml.pre).
KNOWN_PRE_TOKENIZERS = ("gpt-2", "smollm", "llama-bpe", "qwen2", "default")


def quant_type(name: str):
    import gguf

    if name.lower() not in GGUF_TYPES:
        raise UserError(f"GGUF type '{name}' is not one of {', '.join(GGUF_TYPES)}")
    return gguf.GGMLQuantizationType[name.upper()]


def file_type(name: str):
    import gguf

    return gguf.LlamaFileType.ALL_F32 if name.lower() == "f32" else gguf.LlamaFileType[f"MOSTLY_{name.upper()}"]


def permute_for_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF stores each head's rotary pairs as two halves (x[:d/2], x[d/2:]); llama.cpp wants them interleaved.

    Rows of a q/k projection (or its bias) are regrouped per head from [half, pair] to [pair, half] order.
    """
    rows = w.shape[0]
    if rows % n_head or (rows // n_head) % 2:
        raise UserError(f"cannot split {rows} q/k rows into {n_head} heads of even size: config heads do not match weights")
    half = rows // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensor_type_for(gguf_name: str, arr: np.ndarray, qtype: str):
    """Which GGML type a tensor is stored in: 1-D stays F32; Q4_0 / Q4_1 keep the (tied) embedding at Q8_0."""
    import gguf

    if arr.ndim == 1:
        return gguf.GGMLQuantizationType.F32
    target = quant_type(qtype)
    # The embedding doubles as the output head when tied; 4-bit there costs far more quality than elsewhere
    # (the embedded model's own Q4_1 file keeps it at Q8_0 for the same reason).
    four_bit = (gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1)
    if target in four_bit and gguf_name in ("token_embd.weight", "output.weight"):
        target = gguf.GGMLQuantizationType.Q8_0
    block = gguf.GGML_QUANT_SIZES[target][0]
    if arr.shape[-1] % block:
        return gguf.GGMLQuantizationType.F16  # rows not a whole number of quant blocks
    return target


def encode_tensor(arr: np.ndarray, ggml_type):
    """(data, raw_dtype) for GGUFWriter.add_tensor."""
    import gguf

    if ggml_type == gguf.GGMLQuantizationType.F32:
        return arr.astype(np.float32), None
    if ggml_type == gguf.GGMLQuantizationType.F16:
        return arr.astype(np.float16), None
    return gguf.quants.quantize(arr.astype(np.float32), ggml_type), ggml_type


# -- hyper-parameters -----------------------------------------------------------------------------------


def rope_settings(config) -> tuple[float, dict | None]:
    """(theta, scaling) from a transformers 4.x (rope_theta/rope_scaling) or 5.x (rope_parameters) config."""
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    scaling = getattr(config, "rope_scaling", None) or params
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind in (None, "default"):
        return float(theta), None
    if kind == "linear":
        return float(theta), {"type": "linear", "factor": float(scaling["factor"])}
    raise UserError(f"rope type '{kind}' is not supported by the GGUF writer (supported: default, linear)")


def add_hparams(writer, config, name: str, qtype: str) -> None:
    import gguf

    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    theta, scaling = rope_settings(config)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(file_type(qtype))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim * heads != config.hidden_size:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if scaling:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


# -- tokenizer ------------------------------------------------------------------------------------------


def detect_pre_tokenizer(tok_json: dict) -> str:
    """Name llama.cpp uses for this tokenizer.json's pre-tokenizer; UserError when it is not one we can map."""
    pre = tok_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    raise UserError(
        f"the tokenizer's pre-tokenizer ({' + '.join(str(k) for k in kinds)}) has no known llama.cpp name; "
        f"set gguf.pre_tokenizer to one of {', '.join(KNOWN_PRE_TOKENIZERS)} and check the parity report"
    )


def read_gguf_string(path: str | Path, key: str) -> str | None:
    """One string value from a GGUF header (None when absent or not a string)."""
    value = read_gguf_value(path, key)
    return value if isinstance(value, str) else None


def read_gguf_value(path: str | Path, key: str) -> str | int | float | bool | None:
    """One string or scalar value from a GGUF header, reading only up to it (None when absent or an array).

    gguf.GGUFReader parses every field (tens of thousands of tokens and merges: ~20 s on a busy CPU);
    the keys we need come before those arrays, so a sequential scan stops in milliseconds.
    """
    import struct

    import gguf

    scalar = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    formats = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
    string, array = gguf.GGUFValueType.STRING, gguf.GGUFValueType.ARRAY
    with open(path, "rb") as f:

        def u32():
            return struct.unpack("<I", f.read(4))[0]

        def u64():
            return struct.unpack("<Q", f.read(8))[0]

        def text():
            return f.read(u64()).decode("utf-8")

        def skip(vtype):
            if vtype == string:
                f.seek(u64(), 1)
            elif vtype == array:
                item, count = u32(), u64()
                if item in scalar:
                    f.seek(scalar[item] * count, 1)
                else:
                    for _ in range(count):
                        skip(item)
            else:
                f.seek(scalar[vtype], 1)

        if f.read(4) != b"GGUF" or u32() < 2:
            raise UserError(f"{path} is not a GGUF v2+ file")
        u64()  # tensor count
        for _ in range(u64()):
            name, vtype = text(), u32()
            if name == key:
                if vtype == string:
                    return text()
                return struct.unpack(formats[vtype], f.read(scalar[vtype]))[0] if vtype in formats else None
            skip(vtype)
    return None


def source_gguf(model_folder: str | Path) -> Path | None:
    """The GGUF file a model folder was imported from (the embedded model's packaged file), when it still exists.

    A registry model's file is looked up where this environment installed its package: the path recorded at
    import time goes stale when the virtual environment is made again (the imported folder is a user-wide cache)."""
    marker = Path(model_folder) / "tuneforge_source.json"
    if not marker.is_file():
        return None
    recorded = json.loads(marker.read_text(encoding="utf-8"))
    from tuneforge.models.known import KNOWN_MODELS, package_folder

    known = KNOWN_MODELS.get(str(recorded.get("name", "")).lower())
    if known and known.gguf_file:
        try:
            here = (package_folder(known) / known.gguf_file).resolve()
        except UserError:  # the package is not installed here
            here = None
        if here and here.is_file():
            return here
    source = Path(recorded.get("gguf") or "")
    return source if source.is_file() else None


def pre_tokenizer_from_source(model_folder: str | Path) -> str | None:
    """The pre-tokenizer name recorded by llama.cpp's own converter, when the model was imported from a GGUF."""
    source = source_gguf(model_folder)
    return read_gguf_string(source, "tokenizer.ggml.pre") if source else None


def file_type_name(path: str | Path) -> str | None:
    """A GGUF's general.file_type as tuneforge names it (f32, f16, q8_0, q4_1, q4_k_m, ...); None when unnamed."""
    import gguf

    value = read_gguf_value(path, "general.file_type")
    try:
        name = gguf.LlamaFileType(value).name
    except ValueError:
        return None
    return "f32" if name == "ALL_F32" else name.removeprefix("MOSTLY_").lower()


def tokenizer_json(tok) -> dict:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise UserError(
            f"tokenizer {type(tok).__name__} has no fast (tokenizers) backend; the GGUF writer needs a BPE tokenizer.json"
        )
    return json.loads(backend.to_str())


def add_tokenizer(writer, tok, vocab_size: int, pre_tokenizer: str | None) -> dict:
    """Tokens, token types, merges, special ids, add-bos/eos and chat template; returns what it wrote."""
    import gguf

    data = tokenizer_json(tok)
    model = data.get("model", {})
    if model.get("type") != "BPE" or not any(
        p.get("type") == "ByteLevel" for p in [data.get("pre_tokenizer") or {}, *(data.get("pre_tokenizer") or {}).get("pretokenizers", [])]
    ):
        raise UserError("only byte-level BPE tokenizers (GPT-2 style, as in SmolLM, Llama 3, Qwen) can be written to GGUF here")
    pre = pre_tokenizer or detect_pre_tokenizer(data)
    by_id = {i: t for t, i in tok.get_vocab().items()}
    if len(by_id) > vocab_size or max(by_id) >= vocab_size:
        raise UserError(f"the tokenizer has {len(by_id)} tokens but the model's embedding has only {vocab_size} rows")
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # embedding rows without a token (padded vocab)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    special = {
        "bos": tok.bos_token_id, "eos": tok.eos_token_id, "unk": tok.unk_token_id,
        "pad": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    }
    for kind, tid in special.items():
        if tid is not None:
            getattr(writer, f"add_{kind}_token_id")(tid)
    probe = tok("a")["input_ids"]
    add_bos = tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id]
    add_eos = tok.eos_token_id is not None and probe[-1:] == [tok.eos_token_id]
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    writer.add_add_space_prefix(False)
    if tok.chat_template:
        writer.add_chat_template(tok.chat_template)
    return {"pre": pre, "tokens": len(tokens), "merges": len(merges), "special_ids": special, "add_bos": add_bos}


# -- the file -------------------------------------------------------------------------------------------


def gguf_namer(config):
    """A function: Hugging Face parameter name -> (kind, GGUF tensor name), or None where llama.cpp's llama
    architecture has no such tensor. The one name table of the model writer, the imatrix and LoRA adapters."""
    import gguf

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    return lambda hf_name: name_map.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))


def llamacpp_rows(kind, arr: np.ndarray, config) -> np.ndarray:
    """`arr` (rows = a projection's outputs) in llama.cpp's row order: q and k rows regrouped for its rotary."""
    import gguf

    heads = config.num_attention_heads
    if kind == gguf.MODEL_TENSOR.ATTN_Q:
        return permute_for_rope(arr, heads)
    if kind == gguf.MODEL_TENSOR.ATTN_K:
        return permute_for_rope(arr, getattr(config, "num_key_value_heads", None) or heads)
    return arr


def gguf_tensors(model, qtype: str):
    """Yield (gguf name, array to store) for every weight, q/k permuted, the tied head left out."""
    import torch

    config = model.config
    name_of = gguf_namer(config)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd as the output head when output.weight is absent
        found = name_of(hf_name)
        if found is None:
            raise UserError(f"weight '{hf_name}' has no GGUF name for the llama architecture; is this a Llama-style model?")
        kind, gguf_name = found
        yield gguf_name, llamacpp_rows(kind, tensor.detach().to(torch.float32).cpu().numpy(), config)


def write_gguf(model, tok, path: str | Path, qtype: str = "f16", *, pre_tokenizer: str | None = None, name: str | None = None) -> Path:
    """Write `model` (a merged transformers Llama-architecture model) and `tok` to one GGUF file, atomically."""
    import gguf
    from tqdm import tqdm

    qtype = qtype.lower()
    quant_type(qtype)
    config = model.config
    if config.model_type not in SUPPORTED_ARCHS:
        raise UserError(
            f"GGUF export supports {', '.join(SUPPORTED_ARCHS)} models; this one is '{config.model_type}'. "
            "Use export format 'merged' for other architectures"
        )
    if is_adapter_model(model):
        raise UserError("merge the LoRA adapter before writing GGUF (tuneforge export/quantize do it for you)")
    path = Path(path)
    with atomic_file(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        add_hparams(writer, config, name or str(getattr(config, "_name_or_path", "") or "model").rstrip("/").split("/")[-1], qtype)
        add_tokenizer(writer, tok, config.vocab_size, pre_tokenizer)
        n = sum(1 for k in model.state_dict() if not (k == "lm_head.weight" and config.tie_word_embeddings))
        for gguf_name, arr in tqdm(gguf_tensors(model, qtype), total=n, desc=f"GGUF {qtype.upper()}", unit="tensor"):
            data, raw = encode_tensor(arr, tensor_type_for(gguf_name, arr, qtype))
            writer.add_tensor(gguf_name, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path
