"""JSON-schema constrained decoding (OpenAI's `response_format`) for the transformers and llama.cpp engines.

Both engines use llguidance, so a schema gets the same grammar, or the same 400, whichever engine serves it.
Why llguidance, measured on this CPU with SmolLM2-135M and transformers 5.25: its mask costs ~0.15 ms a token
and a schema compiles in ~2 ms, from one small wheel with no dependencies. xgrammar was as quick (~0.3 ms) but
requires triton (~1 GB) on Linux x86_64; lm-format-enforcer's transformers integration fails to import on
transformers 5.x. llama-cpp-python's own GBNF grammar works too, but would be a second schema compiler.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tuneforge.serve.protocol import APIError

# No free whitespace: a small model allowed it can pad with newlines until max_tokens cuts the JSON off.
OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def grammar_for(schema: dict[str, Any]) -> str:
    """llguidance's grammar for `schema`, or a 400 saying why the compiler rejects it."""
    from llguidance import LLMatcher

    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, overrides=OPTIONS)
    except ValueError as e:
        error = str(e)
    else:
        error = LLMatcher.validate_grammar(grammar)
    if error:
        raise APIError(400, f"response_format: unsupported JSON schema: {error}", param="response_format",
                       code="invalid_json_schema")
    return grammar


class Constraint:
    """One request's place in its grammar: which tokens may come next, moved on by each token generated."""

    def __init__(self, tokenizer, schema: dict[str, Any], vocab: int):
        from llguidance import LLMatcher

        self.matcher = LLMatcher(tokenizer, grammar_for(schema))
        if self.matcher.is_error():  # e.g. a grammar past the parser's limits for this vocabulary
            raise APIError(400, f"response_format: {self.matcher.get_error()}", param="response_format",
                           code="invalid_json_schema")
        self.vocab = vocab
        self.bitmask = np.zeros((1, (vocab + 31) // 32), dtype=np.int32)

    def allowed(self) -> np.ndarray:
        """A bool per token id."""
        from llguidance.numpy import fill_next_token_bitmask

        fill_next_token_bitmask(self.matcher, self.bitmask)  # bit i of word w is token 32*w+i (little-endian)
        return np.unpackbits(self.bitmask.view(np.uint8), bitorder="little")[: self.vocab].astype(bool)

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise RuntimeError(f"constrained decoding failed: {self.matcher.get_error()}")

    @property
    def complete(self) -> bool:
        """The JSON is whole: nothing but an end token may follow."""
        return self.matcher.is_stopped()
