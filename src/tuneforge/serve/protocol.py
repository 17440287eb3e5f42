"""OpenAI's request and response formats: requests as pydantic models, responses built as plain dicts (fast on
the streaming path) and declared as models for the OpenAPI document (tests hold the two together).

Unknown request fields are ignored (as vLLM does) so that clients sending extras keep working; fields we
cannot honour with a non-default value (n>1, logprobs, tools) are refused with OpenAI's error body.

The document declares what is accepted (n: 1, no tools, text parts) while the models stay lenient, so that a
value we refuse gets our 400 naming it rather than pydantic's wording.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema


def documented(schema: dict) -> WithJsonSchema:
    return WithJsonSchema(schema, mode="validation")


NULL = {"type": "null"}


class APIError(Exception):
    """An HTTP error with OpenAI's body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Request(BaseModel):
    # strict: a value of the wrong JSON type is a 400, as the document says (no 0.0 for a boolean, "5" for an
    # integer); an integer still passes for a number. Unknown fields are ignored, as OpenAI clients send extras.
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Request):
    include_usage: bool = False


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[str | list[dict[str, Any]] | None, documented({"anyOf": [{"type": "string"}, NULL, {
        "type": "array", "items": {"type": "object", "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                                   "required": ["type"]}}]})] = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise APIError(400, f"content part type '{part.get('type')}' is not supported; send text parts",
                               param="messages")
            parts.append(str(part.get("text", "")))
        return "".join(parts)


class JsonSchemaFormat(_Request):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")  # `schema` would shadow BaseModel's
    strict: bool | None = None  # the answer always follows the schema, strict or not


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class _Sampling(_Request):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, json_schema_extra={"maximum": 1})
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Annotated[str | list[str] | None, documented(
        {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}, NULL]})] = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)  # int64, as OpenAI has it
    logprobs: Annotated[bool | int | None, documented({"enum": [False, 0, None]})] = None
    response_format: ResponseFormat | None = None
    # vLLM's extension (llama-server has it too): keep answering past the end token up to max_tokens, so that
    # load benches compare the same number of tokens on every server
    ignore_eos: bool = False

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise APIError(400, "stop accepts at most 4 sequences", param="stop")
        return [s for s in stops if s]

    def check_supported(self) -> None:
        if self.n != 1:
            raise APIError(400, f"n={self.n} is not supported: this server returns one choice per request (n=1)",
                           param="n")
        if self.logprobs:
            raise APIError(400, "logprobs are not supported by this server", param="logprobs")

    def json_schema(self) -> dict[str, Any] | None:
        """The schema the answer must follow, if any ({"type": "object"} for json_object mode)."""
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return {"type": "object"}
        if fmt.json_schema is None:
            raise APIError(400, "response_format: type json_schema needs a json_schema object",
                           param="response_format.json_schema")
        return fmt.json_schema.schema_

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: Annotated[list[dict] | None, documented({"anyOf": [{"type": "array", "maxItems": 0}, NULL]})] = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.tools:
            raise APIError(400, "tools are not supported by this server", param="tools")

    def conversation(self) -> list[dict[str, str]]:
        # "developer" is OpenAI's newer name for the system role; chat templates know "system".
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]

    def wanted_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: Annotated[str | list[str] | list[int], documented({"anyOf": [
        {"type": "string", "minLength": 1}, {"type": "array", "items": {"type": "string", "minLength": 1},
                                             "minItems": 1, "maxItems": 1},
        {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}]})]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for /v1/completions
    echo: bool = Field(False, json_schema_extra={"const": False})
    suffix: Annotated[str | None, documented({"anyOf": [{"const": ""}, NULL]})] = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo or self.suffix:
            raise APIError(400, "echo and suffix are not supported by this server", param="echo" if self.echo else "suffix")
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str) and len(self.prompt) != 1:
            raise APIError(400, "send one prompt per request (a list of several prompts is not supported)", param="prompt")

    def wanted_tokens(self) -> int | None:
        return self.max_tokens


def parse(cls, data: dict):
    """A request model from a JSON object, with the checks the routes make; APIError(400) when it is not one."""
    from pydantic import ValidationError

    try:
        req = cls.model_validate(data)
    except ValidationError as e:
        raise validation_error(e.errors()) from e
    req.check_supported()
    return req


# Response bodies, as declared in /openapi.json.
Finish = Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str
    refusal: None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None
    finish_reason: Finish


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: None
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: None
    finish_reason: Finish | None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion (`data: {...}`; the stream ends with `data: [DONE]`).
    With stream_options.include_usage, `usage` is null on every chunk but a last one with no choices."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    system_fingerprint: None
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None
    finish_reason: Finish | None  # None only on a streamed chunk that does not end the stream


class Completion(BaseModel):
    """A completion, or (with stream=true) one server-sent event of it, shaped as in ChatCompletionChunk."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: None
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    parent: str | None
    max_model_len: int
    max_tokens: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok", "loading", "error"]
    error: str | None = None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_response(rid: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": finish}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_chunk(rid: str, created: int, model: str, delta: dict, finish: str | None, with_usage: bool) -> dict:
    chunk = {
        "id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if with_usage:
        chunk["usage"] = None  # OpenAI sends null on every chunk but the last when include_usage is on
    return chunk


def completion_response(rid: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def completion_chunk(rid: str, created: int, model: str, text: str, finish: str | None, with_usage: bool) -> dict:
    chunk = {
        "id": rid, "object": "text_completion", "created": created, "model": model, "system_fingerprint": None,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }
    if with_usage:
        chunk["usage"] = None
    return chunk


def usage_chunk(rid: str, created: int, model: str, obj: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": rid, "object": obj, "created": created, "model": model, "system_fingerprint": None,
            "choices": [], "usage": usage(prompt_tokens, completion_tokens)}


def validation_error(errors: list[dict]) -> APIError:
    """Turn pydantic's first error into OpenAI's 400 body, naming the field as the client sent it."""
    first = errors[0]
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    return APIError(400, f"{param}: {first.get('msg')}" if param else str(first.get("msg")), param=param)
