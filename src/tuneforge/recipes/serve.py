"""`tuneforge serve [MODEL] [--adapter NAME=PATH ...]`: the OpenAI-compatible server and the web chat page."""

from __future__ import annotations

import argparse
import errno
import os
import socket
from pathlib import Path

from pydantic import ValidationError

from tuneforge.errors import UserError
from tuneforge.serve.settings import API_KEY_ENV, ServeConfig


def parse_adapters(specs: list[str]) -> dict[str, str]:
    """NAME=PATH pairs; a bare PATH is named after its run folder (runs/NAME/adapter -> NAME)."""
    adapters: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            path = spec
            folder = Path(spec.rstrip("/"))
            name = folder.parent.name if folder.name == "adapter" and folder.parent.name else folder.name
        if not name or not path:
            raise UserError(f"--adapter '{spec}': expected NAME=PATH, e.g. --adapter sentiment=runs/sst2/adapter")
        if name in adapters:
            raise UserError(f"--adapter: the name '{name}' is given twice; pick distinct names with NAME=PATH")
        adapters[name] = path
    return adapters


def read_api_key(path: str | None) -> str | None:
    if path:
        try:
            key = Path(path).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise UserError(f"--api-key-file {path}: {e.strerror}") from e
        if not key:
            raise UserError(f"--api-key-file {path} is empty")
        return key
    return os.environ.get(API_KEY_ENV) or None


def make_config(model: str | None = None, **options) -> ServeConfig:
    if options.get("port") is None:
        options["port"] = int(os.environ["PORT"]) if os.environ.get("PORT", "").isdigit() else ServeConfig().port
    try:
        return ServeConfig(model=model, **options)
    except ValidationError as e:
        problems = "; ".join(f"--{'.'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}" for err in e.errors())
        raise UserError(f"serve options: {problems}") from e


def check_port_free(host: str, port: int) -> None:
    """Bind every address uvicorn will bind for HOST:PORT, then close at once; refuse a port in use as the user's
    problem. Like uvicorn (asyncio's create_server) the test sockets set SO_REUSEADDR, so a port left in TIME_WAIT by
    an earlier server still counts as free, and IPV6_V6ONLY, so '::' does not collide with an IPv4 server."""
    if port == 0:  # the system picks a free port
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: not an address of this machine ({e.strerror}); "
                        "use 127.0.0.1, 0.0.0.0 or an interface's address") from e
    bound = 0
    for family, kind, proto, _, address in dict.fromkeys(infos):
        try:
            sock = socket.socket(family, kind, proto)
        except OSError as e:  # an address family this kernel lacks (IPv6 off): asyncio skips it too
            if e.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
                continue
            raise UserError(f"--host {host}: cannot open a socket for it ({e.strerror})") from e
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as e:
                if e.errno == errno.EADDRNOTAVAIL:  # asyncio skips an address family the machine lacks, so do we
                    continue
                if e.errno == errno.EADDRINUSE:
                    raise UserError(f"--port {port} on {host} is in use; pick another --port or stop the process "
                                    "using it") from e
                if e.errno == errno.EACCES:
                    raise UserError(f"--port {port}: binding it needs more privileges; pick a --port above 1023") from e
                raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from e
            bound += 1
    if not bound:
        raise UserError(f"--host {host}: not an address of this machine; use 127.0.0.1, 0.0.0.0 or an interface's address")


def serve(model: str | None = None, *, adapters: dict[str, str] | None = None, **options) -> None:
    """Run the server until interrupted. Options are ServeConfig's fields (host, port, engine, api_key, ...)."""
    config = make_config(model, adapters=adapters or {}, **options)
    check_port_free(config.host, config.port)  # before anything loads: uvicorn's own bind error comes after the banner

    import uvicorn

    from tuneforge.models.adapters import check_adapter, check_gguf_adapter
    from tuneforge.serve.app import create_app
    from tuneforge.serve.engines import load_engine, pick_engine

    # fail fast, before minutes of loading, on an artifact or adapter the chosen engine cannot serve
    check = check_gguf_adapter if pick_engine(config) == "llamacpp" else check_adapter
    for name, path in config.adapters.items():
        check(path, name)
    app = create_app(config, loader=load_engine)
    shown = "localhost" if config.host in ("127.0.0.1", "::1") else config.host
    print(f"tuneforge serve: http://{shown}:{config.port}/ (web chat), OpenAI API at http://{shown}:{config.port}/v1 "
          f"- loading {config.model or 'the embedded model'}; /health turns 200 when ready", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level, timeout_graceful_shutdown=5)


def run(args: argparse.Namespace) -> int:
    serve(
        args.model, adapters=parse_adapters(args.adapter), engine=args.engine, served_model_name=args.served_model_name,
        dtype=args.dtype, device=args.device, host=args.host, port=args.port, api_key=read_api_key(args.api_key_file),
        cors_origins=args.cors_origin, max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens,
        max_body_bytes=args.max_body_bytes, queue_size=args.queue_size, max_batch=args.max_batch,
        n_threads=args.n_threads, n_ctx=args.n_ctx, parallel=args.parallel, eager=args.eager,
        compile=args.compile,
        log_level=args.log_level,
    )
    return 0
