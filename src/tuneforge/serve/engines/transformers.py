"""transformers engine: one scheduler thread decodes every running request together, one token per step.

Continuous batching with a left-padded dynamic KV cache (kv_room: each step written in place): new requests
are prefilled as a batch and their cache is merged into the running one at a step boundary; finished rows are
dropped and the all-padding columns trimmed. Rows may use different LoRA adapters in the same step (peft's `adapter_names`).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque

from tuneforge.errors import UserError
from tuneforge.generation import cache_kwarg
from tuneforge.models.adapters import base_model
from tuneforge.serve.engines.base import (
    BASE,
    GenerationRequest,
    IncrementalDecoder,
    collect,
    end_token_ids,
    queued_chunks,
    sample_token,
    seeded_generator,
    token_chunk,
)
from tuneforge.serve.engines.lean_decode import lean_decoder


class TransformersEngine:
    kind = "transformers"

    def __init__(self, model, tokenizer, *, adapters: list[str] | None = None, max_batch: int = 16, lean=None):
        self.model, self.tokenizer = model, tokenizer
        self.adapters = list(adapters or [])
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        check_full_attention(model)
        self.vocab_size = model.get_output_embeddings().weight.shape[0]  # the logits' width
        self._lltokenizer, self._lltokenizer_lock = None, threading.Lock()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.scheduler = BatchScheduler(
            model, tokenizer, max_batch=max_batch, end_ids=end_token_ids(tokenizer, getattr(model, "generation_config", None)),
            pad_id=pad if pad is not None else 0, per_row_adapters=bool(self.adapters), lean=lean,
        )

    @classmethod
    def load(cls, model: str | None, adapters: dict[str, str], *, dtype: str = "auto", device: str | None = None,
             max_batch: int = 16, compile: bool = False) -> TransformersEngine:
        from tuneforge.models import load_model
        from tuneforge.models.packed import pack_linear_weights

        if compile and adapters:
            raise UserError("--compile serves the base model alone (adapters decode eagerly, per row): drop --compile "
                            "or the --adapter options")

        def build():
            net, tok = load_model(model, dtype=dtype, device=device)
            if adapters:
                net = attach_adapters(net, adapters)
                net.eval()
            pack_linear_weights(net)  # CPU layers only: the engine never trains or changes its weights
            # The lean step's fused packed copies are made here too, off the main thread (see on_passing_thread)
            return net, tok, compiled_decoder(net) if compile else lean_decoder(net)

        net, tok, lean = on_passing_thread(build)
        return cls(net, tok, adapters=list(adapters), max_batch=max_batch, lean=lean)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise UserError("this model's tokenizer has no chat template: use /v1/completions with a plain prompt")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.encode_text(text)

    def encode_text(self, text: str) -> list[int]:
        # Chat templates write their own BOS; plain prompts get what the tokenizer adds by default.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    async def stream(self, request: GenerationRequest):
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()
        job = Job(request, IncrementalDecoder(self.tokenizer),
                  lambda item: loop.call_soon_threadsafe(inbox.put_nowait, item))
        if request.json_schema is not None:
            job.constraint = await asyncio.to_thread(self._constraint, request.json_schema)
        self.scheduler.submit(job)
        try:
            async for chunk in queued_chunks(inbox):
                yield chunk
        finally:
            job.cancelled = True  # a closed stream (client gone, stop string) frees its row at the next step

    def _constraint(self, schema: dict):
        from tuneforge.serve.structured import Constraint

        with self._lltokenizer_lock:  # built once (~1 s), on the first request that needs it
            if self._lltokenizer is None:
                from llguidance.hf import from_tokenizer

                self._lltokenizer = from_tokenizer(self.tokenizer, n_vocab=self.vocab_size,
                                                   eos_token=sorted(self.scheduler.end_ids))
        return Constraint(self._lltokenizer, schema, self.vocab_size)

    def close(self) -> None:
        self.scheduler.close()


def on_passing_thread(work):
    """Run `work` on a thread that ends with it, so that the serving process's only OpenMP pool is the batcher's.
    libgomp counts every thread that ever ran a parallel op; once the pools outnumber the cores (main thread and
    batcher: 4 threads on 2 cores) it stops spin-waiting between ops, and the embedded model's decode step on
    the batcher thread went from 23 to 34 ms. A finished thread's pool is freed."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="tuneforge-load") as pool:
        return pool.submit(work).result()


def compiled_decoder(net):
    """The lean decode step compiled (serve --compile), or one clear error saying why it cannot be."""
    import torch

    lean = lean_decoder(net)
    if lean is None:
        raise UserError(f"--compile needs a Llama, Qwen2 or Mistral layout; this model "
                        f"({getattr(net.config, 'model_type', '?')}) decodes through transformers' forward: drop --compile")
    try:
        with torch.inference_mode():
            lean.compile()
    except Exception as e:  # inductor's failures (no C++ compiler, unsupported op) come as many exception types
        raise UserError(f"--compile failed ({type(e).__name__}: {str(e).strip().splitlines()[0][:300]}); it needs a "
                        "C++ compiler (g++) and Python's headers: install them or drop --compile") from e
    return lean


def check_full_attention(model) -> None:
    """The batcher pads and trims KV caches by position, which sliding-window layers do not allow."""
    from transformers import DynamicCache

    if any(getattr(layer, "is_sliding", False) for layer in DynamicCache(config=model.config).layers):
        raise UserError("this model uses sliding-window attention, which the transformers engine's batcher does not "
                        "support yet: serve it with --engine vllm (on CPU: `make vllm-env`) or export it to GGUF for "
                        "--engine llamacpp")


def attach_adapters(net, adapters: dict[str, str]):
    """Load several LoRA adapters by name onto one base model (peft keeps them side by side)."""
    from peft import PeftModel

    from tuneforge.models.adapters import check_adapter
    from tuneforge.models.loading import adapter_fits

    peft_model = None
    for name, path in adapters.items():
        check_adapter(path, name)
        with adapter_fits(path):
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(net, path, adapter_name=name)
            else:
                peft_model.load_adapter(path, adapter_name=name)
    return peft_model


class Job:
    def __init__(self, request: GenerationRequest, decoder: IncrementalDecoder, emit):
        self.request, self.decoder, self.emit = request, decoder, emit
        self.sampling = request.sampling
        self.generated = 0
        self.done = False
        self.cancelled = False
        self.constraint = None  # structured.Constraint when the answer must follow a JSON schema
        self.generator = seeded_generator(self.sampling)

    def accept(self, token: int, end_ids: set[int]) -> None:
        self.generated += 1
        chunk = token_chunk(token, self.generated, end_ids=end_ids, text_of=self.decoder.push,
                            constraint=self.constraint, sampling=self.sampling)
        if chunk is not None:
            self.done = chunk.finish_reason is not None
            self.emit(chunk)


class BatchScheduler:
    """Owns the model: a daemon thread runs prefill and decode steps; requests arrive through a queue."""

    def __init__(self, model, tokenizer, *, max_batch: int, end_ids: set[int], pad_id: int, per_row_adapters: bool,
                 lean=None):
        self.model, self.max_batch, self.end_ids, self.pad_id = model, max_batch, end_ids, pad_id
        self.per_row_adapters = per_row_adapters
        self.device = next(model.parameters()).device
        self.cache_arg = cache_kwarg(base_model(model))
        # None: the model's architecture decodes through transformers' forward
        self.lean = lean if lean is not None else lean_decoder(model)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.waiting: deque[Job] = deque()
        self.rows: list[Job] = []
        self.cache = self.mask = self.last = None
        self.steps = 0  # decode steps run (tests read it to see batching happen)
        self.thread = threading.Thread(target=self._run, name="tuneforge-batcher", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        self.inbox.put(job)

    def close(self) -> None:
        self.inbox.put(None)
        self.thread.join(timeout=10)

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                new: list[Job] = []
                try:
                    if not self._collect():
                        return
                    new = self._admit()
                    if new:
                        self._prefill(new)
                    elif self.rows:
                        self._decode()
                    self._retire()
                except Exception as e:  # a failed step fails its requests, not the server
                    for job in {id(j): j for j in self.rows + new}.values():
                        job.emit(e)
                    self.rows, self.cache, self.mask, self.last = [], None, None, None

    def _collect(self) -> bool:
        """Move arrivals to the waiting line; block only when there is nothing to do. False on close."""
        return collect(self.inbox, self.waiting, block=not self.rows and not self.waiting)

    def _admit(self) -> list[Job]:
        new = []
        while self.waiting and len(self.rows) + len(new) < self.max_batch:
            job = self.waiting.popleft()
            if not job.cancelled:
                new.append(job)
        return new

    def _prefill(self, jobs: list[Job]) -> None:
        import torch

        from tuneforge.serve.engines.kv_room import roomy_cache

        width = max(len(j.request.prompt_ids) for j in jobs)
        ids = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for i, job in enumerate(jobs):
            prompt = job.request.prompt_ids
            ids[i, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[i, width - len(prompt):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = roomy_cache(self.model.config)
        extra = {"adapter_names": [j.request.adapter or BASE for j in jobs]} if self.per_row_adapters else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                         use_cache=True, logits_to_keep=1, **{self.cache_arg: cache}, **extra)
        tokens = self._sample(out.logits[:, -1, :], jobs)
        if self.rows:
            self._merge(cache, mask)
            self.last = torch.cat([self.last, tokens])
        else:
            self.cache, self.mask, self.last = cache, mask, tokens
        self.rows += jobs
        self._deliver(tokens, jobs)

    def _decode(self) -> None:
        import torch

        positions = self.mask.sum(-1, keepdim=True)  # real tokens so far = position of the token fed now
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        names = [j.request.adapter or BASE for j in self.rows] if self.per_row_adapters else None
        if self.lean is not None:
            logits = self.lean(self.last, self.mask, positions, self.cache, adapter_names=names)
        else:
            extra = {"adapter_names": names} if names is not None else {}
            logits = self.model(input_ids=self.last, attention_mask=self.mask, position_ids=positions,
                                use_cache=True, **{self.cache_arg: self.cache}, **extra).logits[:, -1, :]
        tokens = self._sample(logits, self.rows)
        self.last = tokens
        self.steps += 1
        self._deliver(tokens, self.rows)

    def _merge(self, cache, mask) -> None:
        """Append prefilled rows to the running batch, left-padding whichever cache is shorter."""
        import torch
        import torch.nn.functional as F

        old_len, new_len = self.mask.shape[1], mask.shape[1]
        width = max(old_len, new_len)
        for old, new in zip(self.cache.layers, cache.layers, strict=True):
            for attr in ("keys", "values"):
                a, b = getattr(old, attr), getattr(new, attr)
                a = F.pad(a, (0, 0, width - old_len, 0))
                b = F.pad(b, (0, 0, width - new_len, 0))
                setattr(old, attr, torch.cat([a, b]))
        self.mask = torch.cat([F.pad(self.mask, (width - old_len, 0)), F.pad(mask, (width - new_len, 0))])

    def _retire(self) -> None:
        keep = [i for i, job in enumerate(self.rows) if not (job.done or job.cancelled)]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.cache, self.mask, self.last = [], None, None, None
            return
        import torch

        index = torch.tensor(keep, device=self.device)
        self.rows = [self.rows[i] for i in keep]
        self.mask, self.last = self.mask[index], self.last[index]
        start = int(self.mask.argmax(dim=1).min())  # columns left of every row's first real token are padding
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, start:, :]
            layer.values = layer.values[index, :, start:, :]

    def _sample(self, logits, jobs: list[Job]):
        import torch

        masked = [(i, job.constraint) for i, job in enumerate(jobs) if job.constraint is not None]
        if masked:  # constrained rows may only pick tokens their grammar allows
            logits = logits.clone()
            for i, constraint in masked:
                allowed = torch.from_numpy(constraint.allowed()).to(logits.device)
                logits[i].masked_fill_(~allowed, float("-inf"))
        tokens = logits.float().argmax(dim=-1)  # same token; CPU argmax over bf16 is 2.3x slower than over fp32
        for i, job in enumerate(jobs):
            if job.sampling.temperature > 0:
                tokens[i] = sample_token(logits[i], job.sampling, job.generator)
        return tokens.unsqueeze(-1)

    def _deliver(self, tokens, jobs: list[Job]) -> None:
        for job, token in zip(jobs, tokens[:, 0].tolist(), strict=True):
            if job.cancelled:
                continue
            try:
                job.accept(token, self.end_ids)
            except Exception as e:  # one request's grammar failing ends that request only
                job.done = True
                job.emit(e)
