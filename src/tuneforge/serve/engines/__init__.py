"""Engines behind one protocol; `load_engine` picks one by flag or by the artifact's type."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.serve.engines.base import Chunk, Engine, GenerationRequest, Sampling
from tuneforge.serve.settings import ServeConfig

__all__ = ["Chunk", "Engine", "GenerationRequest", "Sampling", "load_engine", "pick_engine", "gguf_file"]


def gguf_file(model: str | None) -> Path | None:
    """The GGUF a model name points at: a .gguf file, a folder holding exactly one, or a packaged registry model."""
    from tuneforge.models.known import DEFAULT_MODEL, KNOWN_MODELS, package_folder

    name = model or DEFAULT_MODEL
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise UserError(f"GGUF file {path} not found")
        return path
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if len(found) > 1:
            raise UserError(f"{path} holds several GGUF files ({', '.join(f.name for f in found)}): pass one of them")
        return found[0] if found else None
    known = KNOWN_MODELS.get(name.lower())
    if known and known.gguf_file:
        return package_folder(known) / known.gguf_file
    return None


def pick_engine(config: ServeConfig) -> str:
    if config.engine != "auto":
        return config.engine
    model = config.model
    if model and (model.lower().endswith(".gguf") or (Path(model).is_dir() and not (Path(model) / "config.json").exists()
                                                      and gguf_file(model))):
        return "llamacpp"
    if importlib.util.find_spec("vllm") is not None:
        import torch

        if torch.cuda.is_available():
            return "vllm"
    return "transformers"


def load_engine(config: ServeConfig) -> Engine:
    kind = pick_engine(config)
    if kind == "llamacpp":
        from tuneforge.serve.engines.llamacpp import LlamaCppEngine

        path = gguf_file(config.model)
        if path is None:
            raise UserError(f"--engine llamacpp needs a .gguf file; '{config.model}' is not one "
                            "(run `tuneforge export` with format gguf first)")
        return LlamaCppEngine.load(path, n_ctx=config.n_ctx, n_threads=config.n_threads, parallel=config.parallel,
                                   adapters=config.adapters)
    if kind == "vllm":
        from tuneforge.serve.engines.vllm import VllmEngine

        return VllmEngine.load(config.model, config.adapters, dtype=config.dtype, max_batch=config.max_batch,
                               eager=config.eager)
    from tuneforge.serve.engines.transformers import TransformersEngine

    if config.model and config.model.lower().endswith(".gguf"):
        raise UserError(f"{config.model} is a GGUF file: serve it with --engine llamacpp (or leave --engine auto)")
    return TransformersEngine.load(config.model, config.adapters, dtype=config.dtype, device=config.device,
                                   max_batch=config.max_batch, compile=config.compile)
