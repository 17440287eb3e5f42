"""Chat messages → token ids with loss labels on assistant turns only, and those padded into a batch."""

from __future__ import annotations

from tuneforge.errors import UserError

IGNORE = -100
KEEP_EDGE = 16  # when a source must be cut, keep its first and last tokens (template markers, the question)


def render_pieces(tok, messages: list[dict]) -> list[tuple[str, bool]]:
    """Split the chat-template rendering into (text, is_target) pieces at assistant-turn boundaries.

    Each assistant turn's text is what the template adds after the generation prompt, so the loss
    covers the reply and its end-of-turn marker but never the prompt.
    """
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prefix = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        upto = tok.apply_chat_template(messages[: i + 1], tokenize=False)
        if not prefix.startswith(done) or not upto.startswith(prefix):
            raise UserError("the model's chat template does not render conversations prefix by prefix; "
                            "loss masking needs a template where each turn appends to the previous ones")
        pieces.append((prefix[len(done):], False))
        pieces.append((upto[len(prefix):], True))
        done = upto
    rest = tok.apply_chat_template(messages, tokenize=False) if messages else ""
    if len(rest) > len(done):
        pieces.append((rest[len(done):], False))
    return [p for p in pieces if p[0]]


def encode_conversation(tok, messages: list[dict], max_len: int) -> dict:
    """Token ids and labels (-100 outside assistant turns). Too long: cut the middle of the longest source piece."""
    pieces = [(tok(text, add_special_tokens=False)["input_ids"], target) for text, target in render_pieces(tok, messages)]
    total = sum(len(ids) for ids, _ in pieces)
    truncated = total > max_len
    while total > max_len:
        sources = [i for i, (ids, target) in enumerate(pieces) if not target and len(ids) > 2 * KEEP_EDGE]
        if not sources:
            break
        i = max(sources, key=lambda j: len(pieces[j][0]))
        ids = pieces[i][0]
        cut = min(total - max_len, len(ids) - 2 * KEEP_EDGE)
        keep_tail = KEEP_EDGE
        pieces[i] = (ids[: len(ids) - keep_tail - cut] + ids[len(ids) - keep_tail:], False)
        total -= cut
    input_ids: list[int] = []
    labels: list[int] = []
    for ids, target in pieces:
        input_ids += ids
        labels += ids if target else [IGNORE] * len(ids)
    if len(input_ids) > max_len:  # only the targets are left to cut
        input_ids, labels = input_ids[:max_len], labels[:max_len]
    return {"input_ids": input_ids, "labels": labels, "truncated": truncated}


def encode_prompt(tok, messages: list[dict]) -> list[int]:
    """Prompt ids ending with the assistant generation header."""
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def pad_right(rows: list[list[int]], value: int):
    """Token rows as one (rows, longest) long tensor, each padded on the right with `value`."""
    import torch

    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def collate(examples: list[dict], pad_id: int) -> dict:
    """encode_conversation's rows as one right-padded batch of tensors (labels padded with IGNORE): what
    training, calibration and chat's loss scoring feed the model."""
    return {"input_ids": pad_right([e["input_ids"] for e in examples], pad_id),
            "attention_mask": pad_right([[1] * len(e["input_ids"]) for e in examples], 0),
            "labels": pad_right([e["labels"] for e in examples], IGNORE)}
