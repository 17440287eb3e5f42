"""Serving: an OpenAI-compatible server (FastAPI), its engines, the web chat page and the terminal chat."""

from tuneforge.serve.settings import ServeConfig

__all__ = ["ServeConfig"]
