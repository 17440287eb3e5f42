"""The README's curl examples, run as written against a live server (only the port is changed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_curls() -> list[str]:
    """Every `curl` command in the README, continuation lines joined."""
    lines = README.read_text(encoding="utf-8").splitlines()
    commands, current = [], None
    for line in lines:
        if current is None and line.startswith("curl "):
            current = line
        elif current is not None:
            current = current[:-1] + " " + line.strip()
        if current is not None and not current.endswith("\\"):
            commands.append(current)
            current = None
    return commands


@pytest.fixture()
def sentiment_server(tmp_path, server_factory):
    """The embedded model with an adapter named `sentiment`, as the README's `tuneforge serve --adapter` line."""
    from peft import LoraConfig, get_peft_model

    from tuneforge.models import load_model
    from tuneforge.serve.app import create_app
    from tuneforge.serve.settings import ServeConfig

    model, _ = load_model(None, dtype="float32")
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "sentiment")
    config = ServeConfig(adapters={"sentiment": str(tmp_path / "sentiment")}, max_tokens=256)
    return server_factory(create_app(config), deadline_s=240)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_examples_work_as_written(sentiment_server):
    commands = readme_curls()
    assert len(commands) >= 4, commands
    outputs = []
    for command in commands:
        assert "http://127.0.0.1:8000" in command
        run = command.replace("http://127.0.0.1:8000", sentiment_server.url)
        done = subprocess.run(["bash", "-c", run], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (command, done.stderr)
        outputs.append(done.stdout)
    models, chat, stream, structured = outputs[:4]
    assert {m["id"] for m in json.loads(models)["data"]} >= {"smollm2-135m-instruct", "sentiment"}
    reply = json.loads(chat)
    assert reply["object"] == "chat.completion" and reply["model"] == "sentiment"
    assert reply["choices"][0]["message"]["content"].strip()
    events = [line[len("data: "):] for line in stream.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert re.search(r"\w", text)
    schema = json.loads(commands[3].split("-d '", 1)[1].rstrip("'"))["response_format"]["json_schema"]["schema"]
    jsonschema.validate(json.loads(json.loads(structured)["choices"][0]["message"]["content"]), schema)
