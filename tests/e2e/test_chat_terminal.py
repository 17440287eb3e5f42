"""`tuneforge chat` in a subprocess: streaming replies, /system, /reset, /exit."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

RUN_CHAT = ("import argparse, sys; from tuneforge import cli_args; from tuneforge.recipes import chat; "
            "p = argparse.ArgumentParser(); cli_args.chat(p); sys.exit(chat.run(p.parse_args(sys.argv[1:])))")


def run_chat(args: list[str], stdin: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN_CHAT, *args], input=stdin, capture_output=True, text=True,
                          timeout=timeout, env={"OMP_NUM_THREADS": "1", **__import__("os").environ})


def test_terminal_chat_commands(tiny_paths):
    script = "Xin chào\n/system Trả lời ngắn gọn.\nand again\n/reset\n/bogus\nthird\n/exit\nnever sent\n"
    out = run_chat([tiny_paths["model"], "--adapter", tiny_paths["alpha"], "--temperature", "0",
                    "--max-tokens", "8", "--dtype", "float32"], script)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "(system prompt set)" in text and "(conversation cleared)" in text and "unknown command /bogus" in text
    replies = [line for line in text.splitlines() if "bot> " in line]
    assert len(replies) == 3 and all(len(r.split("bot> ", 1)[1]) > 0 for r in replies), text
    assert "never sent" not in text


@pytest.mark.integration
def test_terminal_chat_real_answer():
    out = run_chat(["--temperature", "0", "--max-tokens", "24"], "What is the capital of France?\n")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Paris" in out.stdout
