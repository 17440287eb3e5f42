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
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from tuneforge.errors import UserError
from tuneforge.serve import protocol as oai
from tuneforge.serve.engines.base import Chunk, Engine, GenerationRequest, Sampling, with_stop_strings
from tuneforge.serve.metrics import Metrics
from tuneforge.serve.settings import ServeConfig

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
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(CountRequests, metrics=state.metrics)

    @app.exception_handler(oai.APIError)
    async def _api_error(request: Request, exc: oai.APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        err = oai.APIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
        return JSONResponse(err.body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception):
        log.exception("tuneforge: request failed")
        err = oai.APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")
        return JSONResponse(err.body(), status_code=500)

    @app.get("/health")
    async def health():
        if state.engine is not None:
            return {"status": "ok"}
        body = {"status": "error", "error": state.load_error} if state.load_error else {"status": "loading"}
        return JSONResponse(body, status_code=503)

    @app.get("/ping")  # SageMaker's readiness probe
    async def ping():
        return await health()

    @app.get("/metrics")
    async def metrics():
        state.metrics.set("tuneforge_queue_depth", state.in_flight)
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(state, request)
        return state.model_list()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_key(state, request)
        req = parse(oai.ChatCompletionRequest, await read_json(request, config.max_body_bytes))
        return await answer(state, req)

    @app.post("/invocations")  # SageMaker's inference route: a chat-completions body in, its response out
    async def invocations(request: Request):
        return await chat_completions(request)

    @app.post("/v1/completions")
    async def completions(request: Request):
        check_key(state, request)
        req = parse(oai.CompletionRequest, await read_json(request, config.max_body_bytes))
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


async def read_json(request: Request, limit: int) -> dict:
    declared = request.headers.get("content-length")
    too_big = oai.APIError(413, f"request body is larger than {limit} bytes (server option --max-body-bytes)",
                           code="request_too_large")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise too_big
    try:
        data = json.loads(body)
    except ValueError as e:
        raise oai.APIError(400, "We could not parse the JSON body of your request. (HINT: This likely means you "
                                f"aren't using your HTTP library correctly. Parser said: {e})") from e
    if not isinstance(data, dict):
        raise oai.APIError(400, "the request body must be a JSON object")
    return data


def parse(cls, data: dict):
    try:
        req = cls.model_validate(data)
    except ValidationError as e:
        raise oai.validation_error(e) from e
    req.check_supported()
    return req


def encode(engine: Engine, req) -> tuple[list[int], str]:
    try:
        if isinstance(req, oai.ChatCompletionRequest):
            return engine.encode_chat(req.conversation()), "messages"
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
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
                        seed=req.seed, stop=req.stops())
    return GenerationRequest(prompt_ids, adapter, sampling)


async def answer(state: ServerState, req):
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
