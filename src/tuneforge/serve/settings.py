"""Every serving knob, declared once with its type, default and meaning."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator

from tuneforge.config import DTYPES, Section

ENGINES = ("auto", "transformers", "llamacpp", "vllm")
API_KEY_ENV = "TUNEFORGE_API_KEY"

# chat's sampling flags: (parse, accepts, what a good value is), checked when the arguments are parsed and again
# by chat()
SAMPLING = {
    "temperature": (float, lambda v: math.isfinite(v) and v >= 0, "a number >= 0 (0 = greedy)"),
    "top_p": (float, lambda v: 0 < v <= 1, "a number above 0 and at most 1"),
    "max_tokens": (int, lambda v: v >= 1, "a whole number >= 1"),
}


class ServeConfig(Section):
    model: str | None = Field(None, description="registry name, HF folder/id, or a .gguf file; None = the embedded model")
    adapters: dict[str, str] = Field(default_factory=dict, description="LoRA adapters served by name: NAME -> adapter folder")
    served_model_name: str | None = Field(None, description="the base model's name in /v1/models (default: derived from `model`)")
    engine: Literal[ENGINES] = Field(
        "auto", description="auto: llamacpp for a .gguf, vllm when installed with a GPU, transformers otherwise"
    )
    dtype: Literal[DTYPES] = Field(
        "auto", description="transformers/vllm weights dtype: auto | bfloat16 | float16 | float32"
    )
    device: str | None = Field(None, description="transformers device (default: cuda when available, else cpu)")
    host: str = Field("127.0.0.1", description="bind address; 0.0.0.0 exposes the server to the network")
    port: int = Field(8000, ge=0, le=65535, description="TCP port ($PORT overrides the default when set)")
    api_key: str | None = Field(None, repr=False, description="require `Authorization: Bearer KEY` on /v1 and /invocations")
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed to call the API from a browser")
    max_prompt_tokens: int = Field(4096, ge=1, description="longer prompts are refused with context_length_exceeded")
    max_tokens: int = Field(1024, ge=1, description="cap on a request's max_tokens (also its default for chat)")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies are refused with 413")
    queue_size: int = Field(64, ge=1, description="requests admitted at once (running + waiting); more get 429")
    max_batch: int = Field(16, ge=1, description="transformers engine: sequences decoded together in one step")
    n_threads: int | None = Field(None, ge=1, description="llamacpp engine: CPU threads (default: all cores)")
    n_ctx: int = Field(4096, ge=256, description="llamacpp engine: context window of each request, in tokens")
    parallel: int = Field(4, ge=1, le=256, description="llamacpp engine: requests decoded together (slots); "
                          "its KV cache holds parallel x n_ctx tokens")
    eager: bool = Field(False, description="vllm engine: run the model eagerly, not as a compiled graph (starts about "
                        "4x faster on a 2-core CPU, decodes slower)")
    compile: bool = Field(False, description="transformers engine: compile the decode step with inductor (needs a C++ "
                          "compiler; Llama, Qwen2, Mistral layouts, no adapters): 2-3 minutes more start-up on a 2-core "
                          "CPU, a faster decode step")
    log_level: str = Field("info", description="uvicorn log level")

    @field_validator("adapters")
    @classmethod
    def _names_are_plain(cls, adapters: dict[str, str]) -> dict[str, str]:
        for name in adapters:
            if not name or any(c.isspace() for c in name):
                raise ValueError(f"adapter name '{name}' must be non-empty without spaces (use --adapter NAME=PATH)")
        return adapters
