"""Tokens and attention for `tuneforge inspect --tokens / --attention`: how a text is split into tokens
(Vietnamese letters that byte-level BPE splits are marked 1/2, 2/2) and a PNG grid of attention maps."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.fileio import atomic_file, nearest_existing
from tuneforge.models.known import DEFAULT_MODEL

MAX_ATTENTION_TOKENS = 48


# -- tokens -----------------------------------------------------------------------------------------------


def tokenize(tok, text: str) -> list[dict]:
    """One dict per token: id, the tokenizer's own piece, and the text it covers. Byte-level BPE splits a
    Vietnamese letter like 'ộ' into two byte pieces; both cover the same characters and are marked 1/2, 2/2."""
    if not text:
        raise UserError("--tokens / --attention need a non-empty text")
    text = unicodedata.normalize("NFC", text)
    try:
        enc = tok(text, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except NotImplementedError:  # slow tokenizers have no offsets
        enc, offsets = tok(text), None
    ids = enc["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    special = set(tok.all_special_ids)
    rows = []
    for i, tid in enumerate(ids):
        if offsets is None:
            covered = tok.decode([tid])
        elif tid in special and offsets[i][0] == offsets[i][1]:
            covered = ""
        else:
            covered = text[offsets[i][0] : offsets[i][1]]
        rows.append({"index": i, "id": tid, "piece": pieces[i], "text": covered, "special": tid in special,
                     "span": tuple(offsets[i]) if offsets is not None else None})
    # Byte-level BPE can split one letter's UTF-8 bytes across tokens: their spans overlap. Each chain of
    # overlapping tokens is marked 1/n..n/n; `new` holds the characters a token adds (they rebuild the text).
    shown = 0
    chain: list[dict] = []
    for r in rows:
        a, b = r["span"] or (0, 0)
        r["new"] = text[max(a, shown) : b] if r["span"] and b > a else ("" if r["special"] else r["text"])
        if chain and r["span"] and a < chain[-1]["span"][1]:
            chain.append(r)
        else:
            mark_chain(chain)
            chain = [r] if r["span"] and b > a else []
        shown = max(shown, b)
    mark_chain(chain)
    return rows


def mark_chain(chain: list[dict]) -> None:
    if len(chain) > 1:
        for k, r in enumerate(chain, 1):
            r["part"] = f"{k}/{len(chain)}"


def token_label(row: dict) -> str:
    if row["special"] or not row["text"]:
        return row["piece"]
    label = row["text"].strip() or "␣"
    return f"{label} {row['part']}" if row.get("part") else label


# -- attention --------------------------------------------------------------------------------------------


def attention_maps(model_name: str | None, text: str, kind: str):
    """(layers × heads × tokens × tokens array, token rows) from an eager-attention forward pass."""
    import torch

    from tuneforge.models.loading import load_model, load_tokenizer

    rows = tokenize(load_tokenizer(model_name), text)  # the length check comes before the weights load
    if len(rows) > MAX_ATTENTION_TOKENS:
        raise UserError(f"--attention text is {len(rows)} tokens; keep it to {MAX_ATTENTION_TOKENS} or fewer so the labels stay readable")
    load_kind = {"encoder": "classifier"}.get(kind, kind)  # the encoder's attention does not depend on a head
    model, _ = load_model(model_name, dtype="float32", device="cpu", kind=load_kind,
                          num_labels=2 if load_kind == "classifier" else None)
    model.set_attn_implementation("eager")  # fused SDPA kernels do not return attention weights
    ids = torch.tensor([[r["id"] for r in rows]])
    with torch.inference_mode():
        if kind == "seq2seq":
            start = model.config.decoder_start_token_id
            out = model(input_ids=ids, decoder_input_ids=torch.tensor([[start]]), output_attentions=True)
            att = out.encoder_attentions
        else:
            att = model(input_ids=ids, output_attentions=True).attentions
    return torch.stack([a[0] for a in att]).float().numpy(), rows


def draw_attention(maps, labels: list[str], path: Path, *, layers: list[int], title: str) -> Path:
    """Rows: layers; columns: heads. Query tokens on the y axis (left column), keys on the x axis (bottom row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    n_heads, n_tok = maps.shape[1], maps.shape[-1]
    cell = max(1.6, 0.17 * n_tok)  # inches per heatmap: about 12 pt per token row, so labels fit
    font = max(6.0, min(11.0, 0.7 * cell * 72 / n_tok))
    label_room = font / 72 * 0.65 * max(len(x) for x in labels) + 0.8
    fig, axes = plt.subplots(len(layers), n_heads, squeeze=False, sharex=True, sharey=True,
                             figsize=(n_heads * cell + label_room + 1.2, len(layers) * cell + label_room + 0.8))
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)  # square-root scale: weak links stay visible
    image = None
    for r, layer in enumerate(layers):
        for h in range(n_heads):
            ax = axes[r][h]
            image = ax.imshow(maps[layer, h], cmap="viridis", norm=norm, interpolation="nearest")
            ax.set_xticks(range(n_tok))
            ax.set_yticks(range(n_tok))
            ax.tick_params(length=0, pad=1)
            if r == 0:
                ax.set_title(f"head {h}", fontsize=13)
            if h == 0:
                ax.set_yticklabels(labels, fontsize=font)
                ax.set_ylabel(f"layer {layer}", fontsize=13, fontweight="bold")
            if r == len(layers) - 1:
                ax.set_xticklabels(labels, fontsize=font, rotation=90)
    fig.suptitle(title, fontsize=16)
    fig.tight_layout(rect=(0, 0, 0.97, 0.99))
    fig.colorbar(image, ax=axes, fraction=0.02, pad=0.01, label="attention weight (query row → key column)")
    try:
        check_out_path(path, "--out")  # checked before the model loaded; the folders may have changed since
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
    finally:
        plt.close(fig)
    return path


def attention_short_name(model: str | None) -> str:
    """The model's name in the PNG's title and default file name: the registry name, a folder's name
    (runs/<name>/model gives <name>-model) or a hub id's last part."""
    if not model:
        return DEFAULT_MODEL
    path = Path(model).expanduser()
    if path.is_dir():
        path = path.resolve()
        return f"{path.parent.name}-{path.name}" if path.name == "model" and path.parent.name else path.name
    return model.rstrip("/").rsplit("/", 1)[-1] or DEFAULT_MODEL


def check_out_path(path: Path, flag: str) -> None:
    """The PNG path can be written: a .png file whose existing folders are folders (missing ones are made)."""
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give a file path inside it, e.g. {path / 'attention.png'}")
    if path.suffix.lower() != ".png":
        raise UserError(f"{flag} {path}: the attention maps are a PNG image; give a path ending in .png")
    folder = nearest_existing(path.parent)
    if not folder.is_dir():
        what = "a broken link" if folder.is_symlink() and not folder.exists() else "a file"
        raise UserError(f"{flag} {path}: {folder} is {what}, not a folder; choose a path whose folders are "
                        "folders (missing ones are made)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: no permission to write in {folder}; choose another path")


def parse_layers(spec: str, n_layers: int) -> list[int]:
    if spec == "all":
        return list(range(n_layers))
    try:
        picked = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--layers '{spec}': give 'all' or comma-separated layer numbers, e.g. 0,5,11") from None
    bad = [x for x in picked if not -n_layers <= x < n_layers]
    if bad or not picked:
        raise UserError(f"--layers '{spec}': the model has layers 0..{n_layers - 1}")
    return [x % n_layers for x in picked]
