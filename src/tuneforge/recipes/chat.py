"""`tuneforge chat [MODEL] [--adapter PATH]`: a streaming, multi-turn chat in the terminal.

Commands: /reset (forget the conversation), /system TEXT (set the system prompt; /system alone clears it),
/exit (or Ctrl-D)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TextIO

from pydantic import ValidationError

from tuneforge.errors import UserError
from tuneforge.models.adapters import check_adapter
from tuneforge.serve.engines import Sampling, load_engine
from tuneforge.serve.engines.base import GenerationRequest, with_stop_strings
from tuneforge.serve.settings import SAMPLING, ServeConfig

HELP = "commands: /reset  /system TEXT  /exit"


def check_sampling(**values) -> None:
    for field, value in values.items():
        _, accepts, rule = SAMPLING[field]
        if not accepts(value):
            raise UserError(f"--{field.replace('_', '-')} {value}: must be {rule}")


def run(args: argparse.Namespace) -> int:
    chat(args.model, adapter=args.adapter, engine=args.engine, system=args.system, temperature=args.temperature,
         top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed, dtype=args.dtype)
    return 0


def chat(model: str | None = None, *, adapter: str | None = None, engine: str = "auto", system: str | None = None,
         temperature: float = 0.7, top_p: float = 0.95, max_tokens: int = 512, seed: int | None = None,
         dtype: str = "auto", stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    check_sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    if adapter:
        check_adapter(adapter)
    try:
        config = ServeConfig(model=model, adapters={"adapter": adapter} if adapter else {}, engine=engine, dtype=dtype)
    except ValidationError as e:
        problems = "; ".join(f"--{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise UserError(f"chat options: {problems}") from e
    print(f"loading {model or 'the embedded model'}{' + ' + adapter if adapter else ''} ...", file=stdout, flush=True)
    eng = load_engine(config)
    sampling = Sampling(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    history: list[dict[str, str]] = []
    loop = asyncio.new_event_loop()
    print(f"tuneforge chat ({eng.kind} engine). {HELP}", file=stdout, flush=True)
    try:
        while True:
            print("you> ", end="", file=stdout, flush=True)
            line = stdin.readline()
            if not line:  # end of input
                print(file=stdout)
                break
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                break
            if text == "/reset":
                history.clear()
                print("(conversation cleared)", file=stdout, flush=True)
                continue
            if text == "/system" or text.startswith("/system "):
                system = text[len("/system"):].strip() or None
                print(f"(system prompt {'set' if system else 'cleared'})", file=stdout, flush=True)
                continue
            if text.startswith("/"):
                print(f"(unknown command {text.split()[0]}; {HELP})", file=stdout, flush=True)
                continue
            history.append({"role": "user", "content": text})
            print("bot> ", end="", file=stdout, flush=True)
            reply = loop.run_until_complete(_reply(eng, system, history, sampling, stdout))
            history.append({"role": "assistant", "content": reply})
    except KeyboardInterrupt:
        print(file=stdout)
    finally:
        eng.close()
        loop.close()


async def _reply(eng, system: str | None, history: list[dict[str, str]], sampling: Sampling, out: TextIO) -> str:
    ids = _prompt(eng, system, history, sampling.max_tokens)
    request = GenerationRequest(ids, "adapter" if eng.adapters else None,
                                Sampling(sampling.max_tokens, sampling.temperature, sampling.top_p, sampling.seed))
    parts = []
    async for chunk in with_stop_strings(eng.stream(request), []):
        parts.append(chunk.text)
        print(chunk.text, end="", file=out, flush=True)
    print(file=out, flush=True)
    return "".join(parts)


def _prompt(eng, system: str | None, history: list[dict[str, str]], reply_tokens: int) -> list[int]:
    """The conversation as prompt ids, dropping the oldest turns when it no longer fits the context."""
    while True:
        messages = ([{"role": "system", "content": system}] if system else []) + history
        ids = eng.encode_chat(messages)
        if len(ids) + reply_tokens <= eng.context_length or len(history) <= 1:
            return ids
        del history[:2]
