"""vLLM engine (GPU): vLLM's async engine does the batching; LoRA adapters travel per request as LoRARequest.

Imported only when vLLM is installed (`pip install 'tuneforge[vllm]'` on a CUDA machine)."""

from __future__ import annotations

import uuid

from tuneforge.errors import UserError
from tuneforge.serve.engines.base import Chunk, GenerationRequest


class VllmEngine:
    kind = "vllm"

    def __init__(self, engine, tokenizer, adapters: dict[str, str], context_length: int):
        from vllm.lora.request import LoRARequest

        self.engine, self.tokenizer = engine, tokenizer
        self.adapters = list(adapters)
        self.context_length = context_length
        self.vocab_size = len(tokenizer)
        self.lora = {name: LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(adapters.items())}

    @classmethod
    def load(cls, model: str | None, adapters: dict[str, str], *, dtype: str = "auto", max_batch: int = 256) -> VllmEngine:
        try:
            from vllm import AsyncEngineArgs, AsyncLLMEngine
        except ImportError as e:
            raise UserError("the vllm engine needs vLLM on a CUDA machine: pip install 'tuneforge[vllm]'") from e
        from tuneforge.models import load_tokenizer, resolve_model

        source = resolve_model(model)
        args = AsyncEngineArgs(model=source, dtype=dtype, enable_lora=bool(adapters), max_loras=max(1, len(adapters)),
                               max_num_seqs=max_batch, max_lora_rank=_max_rank(adapters))
        engine = AsyncLLMEngine.from_engine_args(args)
        context = int(getattr(engine, "model_config", None) and engine.model_config.max_model_len or 4096)
        return cls(engine, load_tokenizer(model), adapters, context)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise UserError("this model's tokenizer has no chat template: use /v1/completions with a plain prompt")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    async def stream(self, request: GenerationRequest):
        from vllm import SamplingParams

        s = request.sampling
        params = SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, seed=s.seed,
                                **structured_outputs(request.json_schema))
        rid = uuid.uuid4().hex
        sent = ""
        outputs = self.engine.generate({"prompt_token_ids": request.prompt_ids}, params, rid,
                                       lora_request=self.lora.get(request.adapter) if request.adapter else None)
        try:
            async for out in outputs:
                choice = out.outputs[0]
                text = choice.text[len(sent):]
                sent = choice.text
                finish = choice.finish_reason if choice.finish_reason in ("stop", "length") else None
                if text or finish or out.finished:
                    yield Chunk(text, len(choice.token_ids), finish or ("stop" if out.finished else None))
                if out.finished:
                    return
        finally:
            await self.engine.abort(rid)

    def close(self) -> None:
        shutdown = getattr(self.engine, "shutdown", None)
        if shutdown:
            shutdown()


def structured_outputs(schema: dict | None) -> dict:
    """vLLM's own guided decoding for a JSON schema (its xgrammar or guidance backend); never run here (no GPU)."""
    if schema is None:
        return {}
    try:
        from vllm.sampling_params import StructuredOutputsParams
    except ImportError:  # vLLM before 0.10.2 named it guided decoding (the old name went in 0.12)
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(json=schema)}
    return {"structured_outputs": StructuredOutputsParams(json=schema)}


def _max_rank(adapters: dict[str, str]) -> int:
    import json
    from pathlib import Path

    ranks = [json.loads((Path(p) / "adapter_config.json").read_text()).get("r", 16) for p in adapters.values()
             if (Path(p) / "adapter_config.json").exists()]
    # vLLM accepts a fixed set of ranks; 16 is its default, larger adapters need the next allowed size.
    return next((r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= max(ranks, default=16)), 512)
