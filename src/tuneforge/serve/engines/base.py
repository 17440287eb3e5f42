"""The engine protocol and the helpers every engine shares (stop strings, end-of-turn tokens, detokenizing)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

# Tokens that end an assistant turn in common chat templates, besides the tokenizer's own eos.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")
BASE = "__base__"  # the adapter name peft uses for "no adapter" in a mixed batch


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False  # vLLM's extension: answer past the end token, up to max_tokens (load benches)


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    adapter: str | None  # None: the base model
    sampling: Sampling
    json_schema: dict[str, Any] | None = None  # the answer must be JSON following it (response_format)


@dataclass
class Chunk:
    """New text since the previous chunk; `finish_reason` is set on the last one (stop | length)."""

    text: str
    completion_tokens: int
    finish_reason: str | None = None


class Engine(Protocol):
    kind: str                 # "transformers" | "llamacpp" | "vllm"
    adapters: list[str]       # adapter names the engine can serve per request
    context_length: int
    vocab_size: int           # a prompt's token ids are below it

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """The chat template applied (with the assistant prompt opened) and tokenized."""

    def encode_text(self, text: str) -> list[int]: ...

    def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Yield chunks until a stop; closing the iterator cancels the generation."""

    def close(self) -> None: ...


async def queued_chunks(inbox: asyncio.Queue) -> AsyncIterator[Chunk]:
    """Chunks an engine's worker thread put in `inbox` (an exception is raised here), until the finishing one.

    Chunks that queued up while the event loop was busy go out as one: under load (or on a small CPU where
    the decode threads and the HTTP side share cores) that is one SSE event and one client-side parse
    instead of several, and never a delay, since nothing waits for more tokens to arrive."""
    while True:
        items = [await inbox.get()]
        while not inbox.empty():
            items.append(inbox.get_nowait())
        merged: Chunk | None = None
        for item in items:
            if isinstance(item, BaseException):
                if merged:
                    yield merged
                raise item
            merged = item if merged is None else Chunk(merged.text + item.text, item.completion_tokens,
                                                        item.finish_reason)
            if item.finish_reason:
                break
        yield merged
        if merged.finish_reason:
            return


async def with_stop_strings(chunks: AsyncIterator[Chunk], stops: list[str]) -> AsyncIterator[Chunk]:
    """Cut the stream at the first stop string, holding back text that may be the start of one."""
    if not stops:
        async for chunk in chunks:
            yield chunk
        return
    hold = max(len(s) for s in stops) - 1
    pending = ""
    tokens = 0
    try:
        async for chunk in chunks:
            tokens = chunk.completion_tokens
            pending += chunk.text
            hits = [i for i in (pending.find(s) for s in stops) if i >= 0]
            if hits:
                yield Chunk(pending[: min(hits)], tokens, "stop")
                return
            if chunk.finish_reason:
                yield Chunk(pending, tokens, chunk.finish_reason)
                return
            safe = len(pending) - hold
            if safe > 0:
                yield Chunk(pending[:safe], tokens)
                pending = pending[safe:]
    finally:
        await chunks.aclose()


def collect(inbox, waiting, *, block: bool) -> bool:
    """Move a scheduler's arrivals (from a queue.SimpleQueue) to its waiting line, blocking for the first only when
    it has nothing to do. False when close() has put None."""
    import queue

    while True:
        try:
            job = inbox.get(block=block)
        except queue.Empty:
            return True
        if job is None:
            return False
        waiting.append(job)
        block = False


def token_chunk(token: int, produced: int, *, end_ids, text_of, constraint, sampling: Sampling) -> Chunk | None:
    """What the `produced`-th sampled token means for the stream: the chunk to send (finish_reason set when the
    answer ends with it) or None when it adds no text yet. `text_of(token)` is the engine's incremental decode."""
    if token in end_ids and not sampling.ignore_eos:
        return Chunk("", produced, "stop")
    text = text_of(token)
    if constraint is not None:
        constraint.accept(token)
        if constraint.complete:  # the JSON is whole: end now rather than spend a step on the end token
            return Chunk(text, produced, "stop")
    if produced >= sampling.max_tokens:  # bytes of a character cut off by the limit are dropped, not shown as U+FFFD
        return Chunk(text, produced, "length")
    return Chunk(text, produced) if text else None


def sample_token(logits, sampling: Sampling, generator) -> int:
    """OpenAI's sampling for one row of logits (a 1-D torch tensor): softmax(logits / temperature), cut to the
    smallest top_p nucleus, drawn with the request's seeded torch.Generator. Temperature 0 is greedy."""
    import torch

    if sampling.temperature <= 0:
        return int(logits.argmax())
    # Shifted to max 0 and in float64: a temperature as small as 1e-250 must give greedy, not NaN.
    row = logits.double()
    probs = torch.softmax((row - row.max()) / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs > sampling.top_p  # keep the smallest set reaching top_p
        sorted_probs[drop] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator)[0])


def seeded_generator(sampling: Sampling):
    """The request's own random stream (None when greedy): its seed, or a fresh one."""
    import torch

    if sampling.temperature <= 0:
        return None
    return torch.Generator().manual_seed(sampling.seed if sampling.seed is not None else random.randrange(2**63))


def end_token_ids(tokenizer, generation_config=None) -> set[int]:
    """Token ids that end a reply: the tokenizer's eos, the generation config's eos, and known end-of-turn marks."""
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif source:
            ids.update(int(i) for i in source)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return ids


class IncrementalDecoder:
    """Turns a growing list of token ids into text pieces, never splitting a multi-byte character (Vietnamese
    diacritics span several byte-level tokens), by decoding a short window and emitting only completed text."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # window start: a few tokens of context so spacing decodes right
        self.read = 0    # tokens already emitted

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        now = decode(self.ids[self.prefix:], skip_special_tokens=True)
        if now.endswith("\ufffd") or len(now) <= len(before):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return now[len(before):]
