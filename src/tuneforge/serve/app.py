"""The OpenAI-compatible HTTP API, the web chat page and the SageMaker container contract, over one engine."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneforge.errors import UserError
from tuneforge.serve import protocol as oai
from tuneforge.serve.engines.base import Chunk, Engine, GenerationRequest, Sampling, with_stop_strings
from tuneforge.serve.metrics import Metrics
from tuneforge.serve.settings import ServeConfig
from tuneforge.serve.structured import grammar_for

WEB = Path(__file__).parent / "web"
log = logging.getLogger("tuneforge.serve")


def served_name(config: ServeConfig) -> str:
    if config.served_model_name:
        return config.served_model_name
    from tuneforge.models.known import DEFAULT_MODEL

    model = config.model or DEFAULT_MODEL
    path = Path(model)
    return path.stem if path.suffix.lower() == ".gguf" else (path.name if path.exists() else model)


class ServerState:
    def __init__(self, config: ServeConfig):
        self.config = config
        self.engine: Engine | None = None
        self.load_error: str | None = None
        self.base = served_name(config)
        self.base_aliases = {self.base, config.model or self.base}
        self.in_flight = 0
        self.metrics = Metrics()
        self.started = int(time.time())

    def ready(self) -> Engine:
        if self.engine is None:
            msg = f"model failed to load: {self.load_error}" if self.load_error else "model is loading; retry shortly"
            raise oai.APIError(503, msg, type="server_error", code="model_not_ready")
        return self.engine

    def adapter_for(self, model: str) -> str | None:
        engine = self.ready()
        if model in engine.adapters:
            return model
        if model in self.base_aliases:
            return None
        raise oai.APIError(404, f"The model `{model}` does not exist or you do not have access to it.",
                           param="model", code="model_not_found")

    def model_list(self) -> dict:
        engine = self.ready()
        rows = [{"id": self.base, "object": "model", "created": self.started, "owned_by": "tuneforge",
                 "root": self.base, "parent": None}]
        rows += [{"id": a, "object": "model", "created": self.started, "owned_by": "tuneforge", "root": self.base,
                  "parent": self.base} for a in engine.adapters]
        for row in rows:
            row.update(max_model_len=engine.context_length, max_tokens=self.config.max_tokens)
        return {"object": "list", "data": rows}


def create_app(config: ServeConfig | None = None, engine: Engine | None = None,
               loader: Callable[[ServeConfig], Engine] | None = None) -> FastAPI:
    """An app serving `engine`, or one that loads in the background (health answers 503 until it is ready)."""
    config = config or ServeConfig()
    state = ServerState(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if engine is not None:
            state.engine = engine
        else:
            threading.Thread(target=_load, args=(state, loader), name="tuneforge-load", daemon=True).start()
        yield
        if state.engine is not None:
            state.engine.close()

    app = FastAPI(title="tuneforge", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.tuneforge = state
    app.add_middleware(ApiGate, state=state)  # innermost, so CORS answers preflights before the key is asked for
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(CountRequests, metrics=state.metrics)
    app.openapi = lambda: openapi_document(app)

    @app.exception_handler(oai.APIError)
    async def _api_error(request: Request, exc: oai.APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(request: Request, exc: RequestValidationError):
        err = invalid_body(exc.errors())
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        err = oai.APIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
        return JSONResponse(err.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception):
        log.exception("tuneforge: request failed")
        err = oai.APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")
        return JSONResponse(err.body(), status_code=500)

    @app.get("/health", responses={200: {"model": oai.Health}, 503: {"model": oai.Health}})
    async def health():
        if state.engine is not None:
            return {"status": "ok"}
        body = {"status": "error", "error": state.load_error} if state.load_error else {"status": "loading"}
        return JSONResponse(body, status_code=503)

    @app.get("/ping", responses={200: {"model": oai.Health}, 503: {"model": oai.Health}})  # SageMaker's probe
    async def ping():
        return await health()

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        state.metrics.set("tuneforge_queue_depth", state.in_flight)
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", responses={200: {"model": oai.ModelList}, **ERRORS})
    async def models():
        return state.model_list()

    @app.post("/v1/chat/completions", responses=answers(oai.ChatCompletion, oai.ChatCompletionChunk))
    async def chat_completions(req: oai.ChatCompletionRequest):
        return await answer(state, req)

    # SageMaker's inference route: a chat-completions body in, its response out.
    @app.post("/invocations", responses=answers(oai.ChatCompletion, oai.ChatCompletionChunk))
    async def invocations(req: oai.ChatCompletionRequest):
        return await answer(state, req)

    @app.post("/v1/completions", responses=answers(oai.Completion, oai.Completion))
    async def completions(req: oai.CompletionRequest):
        return await answer(state, req)

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(WEB / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=WEB), name="static")
    return app


def _load(state: ServerState, loader: Callable[[ServeConfig], Engine] | None) -> None:
    from tuneforge.serve.engines import load_engine

    t0 = time.time()
    try:
        state.engine = (loader or load_engine)(state.config)
    except Exception as e:  # reported by /health; the process stays up so the error is visible
        state.load_error = str(e).splitlines()[0] if str(e) else type(e).__name__
        log.error("tuneforge: model failed to load: %s", state.load_error)
        return
    log.info("tuneforge: %s engine ready in %.1fs; serving %s", state.engine.kind, time.time() - t0,
             ", ".join([state.base, *state.engine.adapters]))


def check_key(state: ServerState, request: Request) -> None:
    key = state.config.api_key
    if not key:
        return
    given = request.headers.get("authorization", "")
    token = given[7:].strip() if given.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(token.encode(), key.encode()):
        raise oai.APIError(401, "Incorrect API key provided. Send it as `Authorization: Bearer KEY`.",
                           code="invalid_api_key")


ERRORS = {"4XX": {"model": oai.ErrorResponse, "description": "OpenAI's error body"},
          "5XX": {"model": oai.ErrorResponse, "description": "OpenAI's error body"}}


def answers(whole: type, chunk: type) -> dict:
    """The responses of a generation route: JSON, or with stream=true server-sent events whose data is `chunk`
    JSON (or an error body if generation fails midway), then `[DONE]`. Each event is described as OpenAPI 3.2
    has it: an object whose `data` string holds JSON (contentMediaType / contentSchema)."""
    ref = "#/components/schemas/{}".format
    data = {"type": "string", "contentMediaType": "application/json",
            "contentSchema": {"anyOf": [{"$ref": ref(chunk.__name__)}, {"$ref": ref("ErrorResponse")}]}}
    event = {"type": "object", "required": ["data"], "properties": {"data": {"anyOf": [{"const": "[DONE]"}, data]}}}
    told = f"{whole.__name__} JSON; with stream=true, server-sent events of {chunk.__name__} JSON ending with [DONE]"
    return {200: {"model": whole, "description": told, "content": {"text/event-stream": {"schema": event}}}, **ERRORS}


def openapi_document(app: FastAPI) -> dict:
    """FastAPI's document, plus the stream chunk schemas that only the text/event-stream responses name."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi
        from pydantic.json_schema import models_json_schema

        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        _, defs = models_json_schema([(oai.ChatCompletionChunk, "serialization"), (oai.Completion, "serialization")],
                                     ref_template="#/components/schemas/{model}")
        for name, schema in defs["$defs"].items():
            doc["components"]["schemas"].setdefault(name, schema)
        app.openapi_schema = doc
    return app.openapi_schema


def invalid_body(errors: list[dict]) -> oai.APIError:
    """FastAPI's request validation errors as OpenAI's 400 (never FastAPI's 422 body)."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "invalid JSON")
        return oai.APIError(400, "We could not parse the JSON body of your request. (HINT: This likely means you "
                                 f"aren't using your HTTP library correctly. Parser said: {reason})")
    if tuple(first.get("loc", ())) == ("body",):
        return oai.APIError(400, "the request body must be a JSON object")
    return oai.validation_error(errors)


class ApiGate:
    """Before an API route runs: the API key (401), then the body size (413), so that an unauthenticated or
    oversized body is never parsed. The body is taken as JSON whatever its Content-Type says, as it always was
    here (SageMaker's InvokeEndpoint may send none, or application/octet-stream)."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if (scope["type"] != "http" or scope["method"] == "OPTIONS"
                or not (path.startswith("/v1/") or path == "/invocations")):
            return await self.app(scope, receive, send)
        try:
            check_key(self.state, Request(scope))
            body = await read_body(scope, receive, self.state.config.max_body_bytes) if scope["method"] == "POST" else None
        except oai.APIError as e:
            return await JSONResponse(e.body(), status_code=e.status)(scope, receive, send)
        if body is not None:
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
            receive = replay(body, receive)
        await self.app(scope, receive, send)


async def read_body(scope, receive, limit: int) -> bytes:
    too_big = oai.APIError(413, f"request body is larger than {limit} bytes (server option --max-body-bytes)",
                           code="request_too_large")
    declared = dict(scope["headers"]).get(b"content-length", b"")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body += message.get("body", b"")
        if len(body) > limit:
            raise too_big
        if not message.get("more_body", False):
            break
    return bytes(body)


def replay(body: bytes, receive):
    """A `receive` that hands the app the body already read, then the client's later messages (disconnect)."""
    sent = False

    async def again():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


def encode(engine: Engine, req) -> tuple[list[int], str]:
    try:
        if isinstance(req, oai.ChatCompletionRequest):
            return engine.encode_chat(req.conversation()), "messages"
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            if not all(0 <= t < engine.vocab_size for t in prompt):
                raise oai.APIError(400, f"prompt: token ids must be from 0 to {engine.vocab_size - 1}", param="prompt")
            return list(prompt), "prompt"
        text = prompt[0] if isinstance(prompt, list) and prompt else (prompt or "")
        return engine.encode_text(text), "prompt"
    except UserError as e:
        raise oai.APIError(400, str(e)) from e


def plan(state: ServerState, engine: Engine, req) -> GenerationRequest:
    adapter = state.adapter_for(req.model)
    prompt_ids, field = encode(engine, req)
    limit = min(state.config.max_prompt_tokens, engine.context_length - 1)
    if len(prompt_ids) > limit:
        raise oai.APIError(400, f"This model's maximum prompt length is {limit} tokens. However, your {field} "
                                f"resulted in {len(prompt_ids)} tokens. Please reduce the length of the {field}.",
                           param=field, code="context_length_exceeded")
    if not prompt_ids:
        raise oai.APIError(400, f"{field} is empty", param=field)
    wanted = req.wanted_tokens()
    cap = state.config.max_tokens
    if wanted is not None and wanted > cap:
        raise oai.APIError(400, f"max_tokens is {wanted}; this server allows at most {cap} (server option --max-tokens)",
                           param="max_tokens", code="max_tokens_exceeded")
    room = engine.context_length - len(prompt_ids)
    sampling = Sampling(max_tokens=max(1, min(wanted or cap, room)), temperature=req.temperature, top_p=req.top_p,
                        seed=req.seed, stop=req.stops(), ignore_eos=req.ignore_eos)
    schema = req.json_schema()
    if schema is not None:
        grammar_for(schema)  # a schema the grammar compiler rejects is the client's 400, before it takes a slot
    return GenerationRequest(prompt_ids, adapter, sampling, schema)


async def answer(state: ServerState, req):
    req.check_supported()
    engine = state.ready()
    gen = plan(state, engine, req)
    if state.in_flight >= state.config.queue_size:
        state.metrics.inc("tuneforge_requests_rejected_total")
        raise oai.APIError(429, f"the server is busy: {state.in_flight} requests are in progress (queue size "
                                f"{state.config.queue_size}); retry later", type="requests", code="rate_limit_exceeded")
    slot = Slot(state)
    state.metrics.inc("tuneforge_prompt_tokens_total", len(gen.prompt_ids))
    chat = isinstance(req, oai.ChatCompletionRequest)
    rid = oai.new_id("chatcmpl" if chat else "cmpl")
    chunks = timed(state, slot, with_stop_strings(engine.stream(gen), gen.sampling.stop))
    if req.stream:
        # The background task frees the slot even when the client leaves before the stream starts.
        return StreamingResponse(sse(rid, req, chat, chunks, len(gen.prompt_ids)), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                                 background=BackgroundTask(slot.release))
    text, last = [], Chunk("", 0, "stop")
    try:
        async for chunk in chunks:
            text.append(chunk.text)
            last = chunk
    finally:
        await chunks.aclose()
        slot.release()
    build = oai.chat_response if chat else oai.completion_response
    return build(rid, req.model, "".join(text), last.finish_reason or "stop", len(gen.prompt_ids), last.completion_tokens)


class Slot:
    """One admitted request's place in the queue; released exactly once however the request ends."""

    def __init__(self, state: ServerState):
        self.state, self.held = state, True
        state.in_flight += 1

    def release(self) -> None:
        if self.held:
            self.held = False
            self.state.in_flight -= 1


async def timed(state: ServerState, slot: Slot, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    """Record time to first token, latency and token counts; release the queue slot however the stream ends."""
    t0 = time.perf_counter()
    first = True
    tokens = 0
    try:
        async for chunk in chunks:
            if first and chunk.completion_tokens:
                state.metrics.observe("tuneforge_time_to_first_token_seconds", time.perf_counter() - t0)
                first = False
            tokens = chunk.completion_tokens
            yield chunk
        state.metrics.observe("tuneforge_request_latency_seconds", time.perf_counter() - t0)
    finally:
        slot.release()
        state.metrics.inc("tuneforge_completion_tokens_total", tokens)
        await chunks.aclose()


async def sse(rid: str, req, chat: bool, chunks: AsyncIterator[Chunk], prompt_tokens: int) -> AsyncIterator[str]:
    created = int(time.time())
    with_usage = req.include_usage()
    tokens = 0

    def event(obj: dict) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    try:
        if chat:
            yield event(oai.chat_chunk(rid, created, req.model, {"role": "assistant", "content": ""}, None, with_usage))
        async for chunk in chunks:
            tokens = chunk.completion_tokens
            if chunk.text:
                yield event(oai.chat_chunk(rid, created, req.model, {"content": chunk.text}, None, with_usage) if chat
                            else oai.completion_chunk(rid, created, req.model, chunk.text, None, with_usage))
            if chunk.finish_reason:
                yield event(oai.chat_chunk(rid, created, req.model, {}, chunk.finish_reason, with_usage) if chat
                            else oai.completion_chunk(rid, created, req.model, "", chunk.finish_reason, with_usage))
        if with_usage:
            obj = "chat.completion.chunk" if chat else "text_completion"
            yield event(oai.usage_chunk(rid, created, req.model, obj, prompt_tokens, tokens))
    except asyncio.CancelledError:
        raise
    except Exception as e:  # headers are sent already: report in-band as OpenAI does, then end the stream
        log.exception("tuneforge: generation failed")
        yield event(oai.APIError(500, f"generation failed: {e}", type="server_error").body())
    finally:
        await chunks.aclose()
    yield "data: [DONE]\n\n"


class CountRequests:
    """ASGI middleware counting API requests by endpoint and status (pure ASGI so streaming is untouched)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path.startswith("/v1/") or path == "/invocations"):
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def capture(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            self.metrics.inc("tuneforge_requests_total", endpoint=path, status=str(status["code"]))
