"""Models: the registry of known names, the embedded model's import, and loading."""

from tuneforge.models.dtypes import pick_dtype
from tuneforge.models.known import DEFAULT_MODEL, KNOWN_MODELS
from tuneforge.models.loading import load_model, load_tokenizer
from tuneforge.models.registry import resolve_model

__all__ = ["KNOWN_MODELS", "DEFAULT_MODEL", "resolve_model", "load_model", "load_tokenizer", "pick_dtype"]
