"""llama.cpp engine: serves one GGUF through llama-cpp-python, one stream at a time, with the GGUF's own
chat template. The per-token path is llama-cpp-python's `generate` plus an incremental UTF-8 decode, so the
overhead over raw llama.cpp stays a few function calls per token."""

from __future__ import annotations

import asyncio
import codecs
import os
import random
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.serve.engines.base import END_OF_TURN_TOKENS, Chunk, GenerationRequest, queued_chunks


class LlamaCppEngine:
    kind = "llamacpp"
    adapters: list[str] = []

    def __init__(self, llm):
        self.llm = llm
        self.context_length = llm.n_ctx()
        self.vocab_size = llm.n_vocab()
        self.end_ids = self._end_ids()
        self.template = llm.metadata.get("tokenizer.chat_template")
        self._lltokenizer = None  # llguidance's view of the vocabulary, built on the first JSON-schema request
        # llama.cpp is not thread-safe: every call on `llm` happens on this one worker thread, in arrival order.
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneforge-llamacpp")

    @classmethod
    def load(cls, path: str | Path, *, n_ctx: int = 4096, n_threads: int | None = None) -> LlamaCppEngine:
        try:
            from llama_cpp import Llama
        except ImportError as e:
            raise UserError("the llamacpp engine needs llama-cpp-python: pip install 'tuneforge[llamacpp]'") from e
        threads = n_threads or len(os.sched_getaffinity(0))
        try:
            llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
        except ValueError as e:
            from tuneforge.compress.quant.llamacpp import load_error

            raise load_error(path, e) from e
        return cls(llm)

    def _end_ids(self) -> set[int]:
        ids = {self.llm.token_eos()}
        for mark in END_OF_TURN_TOKENS:
            found = self.llm.tokenize(mark.encode(), add_bos=False, special=True)
            if len(found) == 1:
                ids.add(found[0])
        return ids

    def _token_text(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        if not self.template:
            raise UserError("this GGUF carries no chat template (tokenizer.chat_template): use /v1/completions")
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        formatter = Jinja2ChatFormatter(self.template, eos_token=self._token_text(self.llm.token_eos()),
                                        bos_token=self._token_text(self.llm.token_bos()), add_generation_prompt=True)
        text = formatter(messages=messages).prompt
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def encode_text(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)

    async def stream(self, request: GenerationRequest):
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def emit(item):
            loop.call_soon_threadsafe(inbox.put_nowait, item)

        self.worker.submit(self._generate, request, emit, stop)
        try:
            async for chunk in queued_chunks(inbox):
                yield chunk
        finally:
            stop.set()

    def _generate(self, request: GenerationRequest, emit, stop: threading.Event) -> None:
        try:
            s = request.sampling
            if stop.is_set():
                return
            self.llm.set_seed(s.seed if s.seed is not None else random.randrange(2**31))
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            constraint = self._constraint(request.json_schema) if request.json_schema is not None else None
            processors = [masker(constraint)] if constraint else None
            n = 0
            # temp 0 is greedy in llama-cpp-python; top_k 0 and min_p 0 leave temperature/top_p as OpenAI defines them.
            for token in self.llm.generate(request.prompt_ids, temp=s.temperature, top_p=s.top_p, top_k=0, min_p=0.0,
                                           repeat_penalty=1.0, logits_processor=processors):
                if stop.is_set():
                    return
                n += 1
                if token in self.end_ids:
                    emit(Chunk("", n, "stop"))
                    return
                text = decoder.decode(self.llm.detokenize([token]))
                if constraint is not None:
                    constraint.accept(token)
                    if constraint.complete:  # the JSON is whole: no need to decode the end token
                        emit(Chunk(text, n, "stop"))
                        return
                if n >= s.max_tokens:  # bytes of a character cut off by the limit are dropped, not shown as U+FFFD
                    emit(Chunk(text, n, "length"))
                    return
                if text:
                    emit(Chunk(text, n))
        except Exception as e:
            emit(e)

    def _constraint(self, schema: dict):
        from tuneforge.serve.structured import Constraint

        if self._lltokenizer is None:  # only the worker thread gets here
            from llama_cpp import llama_model_get_vocab
            from llguidance.llamacpp import lltokenizer_from_vocab

            with warnings.catch_warnings():  # llguidance calls a deprecated llama_cpp function once per token
                warnings.simplefilter("ignore", DeprecationWarning)
                vocab = llama_model_get_vocab(self.llm.model)
                self._lltokenizer = lltokenizer_from_vocab(vocab, eos_token=sorted(self.end_ids))
        return Constraint(self._lltokenizer, schema, self.vocab_size)

    def close(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)


def masker(constraint):
    """A llama-cpp-python logits processor: tokens the grammar forbids get -inf (it runs first in the sampler
    chain, so `logits` is indexed by token id)."""

    def mask(_input_ids, logits):
        logits[~constraint.allowed()] = -float("inf")
        return logits

    return mask
