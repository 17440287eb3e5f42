"""Continuous batching over llama.cpp's low-level API, the way llama-server does it: every active request is a
sequence with its own KV cells in one context; each step is one `llama_decode` over the next token of every
generating sequence plus the next chunk of any prompt still being read; new requests join between steps and
finished ones leave. A free slot is picked for the longest cached prefix of the new prompt (the chat template
and system prompt, or the whole earlier conversation), so only the new tokens are read.

LoRA adapters are set on the context, not per sequence, so a step makes one decode per adapter in use
(llama-server batches only requests with the same adapters together, for the same reason)."""

from __future__ import annotations

import codecs
import ctypes
import queue
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from tuneforge.export.parity import common_prefix
from tuneforge.serve.engines.base import (
    GenerationRequest,
    collect,
    sample_token,
    seeded_generator,
    token_chunk,
)


@dataclass
class Job:
    request: GenerationRequest
    emit: object                      # callable: a Chunk or an exception to the waiting HTTP handler
    cancelled: threading.Event
    constraint: object | None = None  # structured.Constraint when the answer must follow a JSON schema
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet read
    next_token: int | None = None     # sampled, not yet in the KV cache
    produced: int = 0
    generator: object | None = None   # torch.Generator of a sampled (temperature > 0) request
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))


@dataclass
class Slot:
    seq: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV cells this sequence holds
    adapter: str | None = None                       # the adapter those cells were computed with
    job: Job | None = None


class Scheduler:
    """Owns the llama.cpp context: every call on it happens on this one thread."""

    def __init__(self, lib, ctx, *, slots: int, n_batch: int, vocab_size: int, end_ids: set[int], detokenize,
                 adapters: dict[str, object]):
        self.lib, self.ctx = lib, ctx
        self.memory = lib.llama_get_memory(ctx)
        self.slots = [Slot(i) for i in range(slots)]
        self.n_batch = n_batch
        self.vocab_size, self.end_ids, self.detokenize = vocab_size, end_ids, detokenize
        self.adapters = adapters  # name -> llama_adapter_lora pointer
        self.active_adapter: str | None = None
        self.batch = lib.llama_batch_init(n_batch + slots, 0, 1)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.waiting: deque[Job] = deque()
        self.prompt_tokens_read = 0  # prompt tokens decoded: what prefix reuse saves shows here
        self.thread = threading.Thread(target=self._run, name="tuneforge-llamacpp", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        self.inbox.put(job)

    def close(self) -> None:
        self.inbox.put(None)

    # -- the loop ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            idle = not self.waiting and not any(s.job for s in self.slots)
            if not collect(self.inbox, self.waiting, block=idle):
                return self._shut()
            self._drop_cancelled()
            self._admit()
            try:
                self._step()
            except Exception as e:  # a failed decode fails the requests in it, not the server
                for slot in self.slots:
                    if slot.job:
                        self._finish(slot, e)
                    # what the cells hold is unknown now: forget it rather than reuse it as a cached prefix
                    self.lib.llama_memory_seq_rm(self.memory, slot.seq, 0, -1)
                    slot.cached = []

    def _drop_cancelled(self) -> None:
        self.waiting = deque(j for j in self.waiting if not j.cancelled.is_set())
        for slot in self.slots:
            if slot.job and slot.job.cancelled.is_set():
                slot.job = None

    def _admit(self) -> None:
        free = [s for s in self.slots if s.job is None]
        while self.waiting and free:
            job = self.waiting.popleft()
            prompt = job.request.prompt_ids
            # cells computed with another adapter are no prefix of this request's
            shared = [(common_prefix(s.cached, prompt), s) for s in free if s.adapter == job.request.adapter]
            cached, slot = max(shared, key=lambda pair: pair[0]) if shared else (0, free[0])
            # keep the cached prefix, but read at least the prompt's last token: its logits give the first answer
            keep = min(cached, len(prompt) - 1)
            self.lib.llama_memory_seq_rm(self.memory, slot.seq, keep, -1)
            slot.cached, slot.adapter, slot.job = prompt[:keep], job.request.adapter, job
            job.pending = prompt[keep:]
            self.prompt_tokens_read += len(job.pending)
            job.generator = seeded_generator(job.request.sampling)
            free.remove(slot)

    def _step(self) -> None:
        groups: dict[str | None, list[Slot]] = {}
        for slot in self.slots:
            if slot.job:
                groups.setdefault(slot.adapter, []).append(slot)
        for adapter, members in groups.items():
            self._decode_group(adapter, members)

    def _decode_group(self, adapter: str | None, members: list[Slot]) -> None:
        b = self.batch
        n = 0
        outputs: list[tuple[Slot, int]] = []
        budget = self.n_batch - sum(1 for s in members if not s.job.pending)  # decode tokens go first
        for slot in members:
            job = slot.job
            if job.pending:
                take = job.pending[: max(budget, 0)]
                if not take:
                    continue
                budget -= len(take)
                job.pending = job.pending[len(take):]
                tokens, want_logits = take, not job.pending
            else:
                tokens, want_logits = [job.next_token], True
            for k, token in enumerate(tokens):
                b.token[n], b.pos[n], b.n_seq_id[n] = token, len(slot.cached) + k, 1
                b.seq_id[n][0] = slot.seq
                b.logits[n] = want_logits and k == len(tokens) - 1
                n += 1
            slot.cached.extend(tokens)  # a list of its own: prompt[:keep] at admission
            if want_logits:
                outputs.append((slot, n - 1))
        if not n:
            return
        b.n_tokens = n
        self._use_adapter(adapter)
        code = self.lib.llama_decode(self.ctx, b)
        if code != 0:
            raise RuntimeError(f"llama_decode failed ({code}): the KV cache is full or the batch is invalid")
        for slot, i in outputs:
            logits = np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.ctx, i), shape=(self.vocab_size,))
            self._advance(slot, logits)

    def _use_adapter(self, name: str | None) -> None:
        if name == self.active_adapter:
            return
        if name is None:
            self.lib.llama_set_adapters_lora(self.ctx, None, 0, None)
        else:
            ptrs = (self.lib.llama_adapter_lora_p_ctypes * 1)(self.adapters[name])
            scales = (ctypes.c_float * 1)(1.0)
            self.lib.llama_set_adapters_lora(self.ctx, ptrs, 1, scales)
        self.active_adapter = name

    def _advance(self, slot: Slot, logits: np.ndarray) -> None:
        """Sample the next token of a sequence and send its text; free the slot when the answer ends."""
        job = slot.job
        s = job.request.sampling
        if job.constraint is not None:
            logits = np.where(job.constraint.allowed(), logits, -np.inf)
        token = int(np.argmax(logits)) if s.temperature <= 0 else sample_token(torch.from_numpy(logits), s, job.generator)
        job.produced += 1
        chunk = token_chunk(token, job.produced, end_ids=self.end_ids, constraint=job.constraint,
                            text_of=lambda t: job.decoder.decode(self.detokenize(t)), sampling=s)
        if chunk is not None and chunk.finish_reason:
            return self._finish(slot, chunk)
        if chunk is not None:
            job.emit(chunk)
        job.next_token = token

    def _finish(self, slot: Slot, last) -> None:
        job, slot.job = slot.job, None  # free first: whoever reads the last chunk may look at the slots
        job.emit(last)

    def _shut(self) -> None:
        for job in [*self.waiting, *(s.job for s in self.slots if s.job)]:
            job.emit(RuntimeError("the server is shutting down"))
        self.lib.llama_batch_free(self.batch)
