"""Models: the registry of known names, the embedded model's import, and loading."""

from tuneforge.models.loading import load_model, load_tokenizer, pick_dtype
from tuneforge.models.registry import DEFAULT_MODEL, KNOWN_MODELS, resolve_model

__all__ = ["KNOWN_MODELS", "DEFAULT_MODEL", "resolve_model", "load_model", "load_tokenizer", "pick_dtype"]
