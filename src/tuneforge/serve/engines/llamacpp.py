"""llama.cpp engine: serves one GGUF through llama-cpp-python's low-level API with continuous batching
(`llamacpp_slots.Scheduler`: up to `parallel` requests decoded together, each in its own KV sequence), the
GGUF's own chat template, and LoRA adapters in llama.cpp's GGUF adapter format chosen per request."""

from __future__ import annotations

import asyncio
import os
import threading
import warnings
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.serve.engines.base import END_OF_TURN_TOKENS, GenerationRequest, queued_chunks
from tuneforge.serve.engines.llamacpp_slots import Job, Scheduler


class LlamaCppEngine:
    kind = "llamacpp"

    def __init__(self, llm, *, parallel: int, n_ctx: int, n_threads: int, adapters: dict[str, str]):
        from llama_cpp import llama_cpp as lib

        self.llm = llm
        self.vocab_size = llm.n_vocab()
        self.end_ids = self._end_ids()
        self.template = llm.metadata.get("tokenizer.chat_template")
        self._formatter = None  # the chat template compiled once (30 ms a time), on the first chat request
        self._lltokenizer = None  # llguidance's view of the vocabulary, built on the first JSON-schema request
        self._lltokenizer_lock = threading.Lock()
        self.adapters = list(adapters)
        loaded = {name: load_adapter(lib, llm.model, path, name, llm.model_path) for name, path in adapters.items()}
        params = lib.llama_context_default_params()
        # one KV stream of n_ctx cells per slot (llama.cpp's non-unified cache), as `llama-server -np N` does
        params.n_ctx, params.n_seq_max, params.kv_unified = n_ctx * parallel, parallel, False
        params.n_batch = params.n_ubatch = 512
        params.n_threads = params.n_threads_batch = n_threads
        params.no_perf = True
        ctx = lib.llama_init_from_model(llm.model, params)
        if not ctx:
            raise UserError(f"llama.cpp could not make a context of {parallel} x {n_ctx} tokens: lower --parallel or --n-ctx")
        self._ctx = ctx
        self.context_length = lib.llama_n_ctx_seq(ctx)
        self.scheduler = Scheduler(lib, ctx, slots=parallel, n_batch=params.n_batch, vocab_size=self.vocab_size,
                                   end_ids=self.end_ids, detokenize=lambda t: llm.detokenize([t]), adapters=loaded)

    @classmethod
    def load(cls, path: str | Path, *, n_ctx: int = 4096, n_threads: int | None = None, parallel: int = 8,
             adapters: dict[str, str] | None = None) -> LlamaCppEngine:
        from tuneforge.compress.quant.llamacpp import import_llama_cpp, load_error

        llama_cpp = import_llama_cpp()
        threads = n_threads or len(os.sched_getaffinity(0))
        try:  # the high-level object gives the model, its tokenizer and metadata; its own small context goes unused
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=threads, verbose=False)
        except ValueError as e:
            raise load_error(path, e) from e
        return cls(llm, parallel=parallel, n_ctx=n_ctx, n_threads=threads, adapters=adapters or {})

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
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            self._formatter = Jinja2ChatFormatter(self.template, eos_token=self._token_text(self.llm.token_eos()),
                                                  bos_token=self._token_text(self.llm.token_bos()),
                                                  add_generation_prompt=True)
        text = self._formatter(messages=messages).prompt
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def encode_text(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)

    async def stream(self, request: GenerationRequest):
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item):
            if not loop.is_closed():
                loop.call_soon_threadsafe(inbox.put_nowait, item)

        # a grammar is compiled here, off the scheduler's thread, so other requests keep decoding meanwhile
        constraint = None if request.json_schema is None else await asyncio.to_thread(self._constraint, request.json_schema)
        self.scheduler.submit(Job(request, emit, cancelled, constraint))
        try:
            async for chunk in queued_chunks(inbox):
                yield chunk
        finally:
            cancelled.set()

    def _constraint(self, schema: dict):
        from tuneforge.serve.structured import Constraint

        with self._lltokenizer_lock:
            if self._lltokenizer is None:
                from llama_cpp import llama_model_get_vocab
                from llguidance.llamacpp import lltokenizer_from_vocab

                with warnings.catch_warnings():  # llguidance calls a deprecated llama_cpp function once per token
                    warnings.simplefilter("ignore", DeprecationWarning)
                    vocab = llama_model_get_vocab(self.llm.model)
                    self._lltokenizer = lltokenizer_from_vocab(vocab, eos_token=sorted(self.end_ids))
        return Constraint(self._lltokenizer, schema, self.vocab_size)

    def close(self) -> None:
        from llama_cpp import llama_cpp as lib

        self.scheduler.close()
        self.scheduler.thread.join(timeout=30)
        if not self.scheduler.thread.is_alive():  # the context goes before the model it was made from
            lib.llama_free(self._ctx)
            self.llm.close()


def load_adapter(lib, model, path: str, name: str, base: str):
    """A LoRA adapter in llama.cpp's GGUF format (`tuneforge export` with format gguf_adapter writes one)."""
    from tuneforge.models.adapters import check_gguf_adapter

    file = check_gguf_adapter(path, name)
    adapter = lib.llama_adapter_lora_init(model, str(file).encode())
    if not adapter:  # a NULL pointer
        from tuneforge.compress.quant.llamacpp import lora_error

        raise lora_error(file, base)
    return adapter
