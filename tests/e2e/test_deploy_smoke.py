"""Smoke test of each bundle without Docker: run the exact command its container would run, on loopback.

The command and its environment are read from the rendered files (Dockerfile ENTRYPOINT, ENV and COPY; the
platform manifest's env), container paths are mapped to the bundle folder through the Dockerfile's COPY lines,
and only the platform's own bindings are replaced: HOST=127.0.0.1 and a free PORT.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tuneforge.deploy import TARGETS, deploy

pytestmark = pytest.mark.e2e
ADAPTER = "tóm-tắt"
NAME = "smoke-chat"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A two-layer Llama with the embedded model's tokenizer and chat template, plus a LoRA adapter."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tuneforge.models import resolve_model

    source = Path(resolve_model(None, do_import=False))
    if not (source / "tokenizer.json").exists():
        pytest.skip("the embedded model is not imported (tuneforge models import smollm2-135m-instruct)")
    root = tmp_path_factory.mktemp("tiny")
    tok = AutoTokenizer.from_pretrained(source)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(root / "adapter")
    return root / "model", root / "adapter"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, buf = [], ""
    for raw in dockerfile.read_text(encoding="utf-8").splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        buf += raw.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        word, _, rest = buf.strip().partition(" ")
        lines.append((word.upper(), rest.strip()))
        buf = ""
    return lines


def cfn_loader():
    """A YAML loader that reads CloudFormation's !Tags as plain lists or scalars."""
    loader = type("CfnLoader", (yaml.SafeLoader,), {})

    def any_tag(ld, suffix, node):
        if isinstance(node, yaml.SequenceNode):
            return ld.construct_sequence(node, deep=True)
        if isinstance(node, yaml.MappingNode):
            return ld.construct_mapping(node, deep=True)
        return ld.construct_scalar(node)

    loader.add_multi_constructor("!", any_tag)
    return loader


def platform_env(bundle: Path, target: str) -> dict[str, str]:
    """The plain (non-secret) environment the platform's manifest gives the container."""
    def from_list(entries):
        return {e["name"]: str(e["value"]) for e in entries or [] if "value" in e}

    if target == "k8s":
        pod = yaml.safe_load((bundle / "k8s" / "deployment.yaml").read_text(encoding="utf-8"))
        return from_list(pod["spec"]["template"]["spec"]["containers"][0].get("env"))
    if target == "gcp":
        svc = yaml.safe_load((bundle / "cloudrun.yaml").read_text(encoding="utf-8"))
        return from_list(svc["spec"]["template"]["spec"]["containers"][0].get("env"))
    if target == "azure":
        dep = yaml.safe_load((bundle / "azureml" / "deployment.yml").read_text(encoding="utf-8"))
        return {k: str(v) for k, v in dep["environment_variables"].items()}
    if target == "aws":
        cfn = yaml.load((bundle / "cloudformation.yaml").read_text(encoding="utf-8"), Loader=cfn_loader())
        env = cfn["Resources"]["Model"]["Properties"]["PrimaryContainer"]["Environment"]
        # !If [HasModelData, s3 case, baked case]: no ModelDataUrl here, so the baked branch.
        return {k: (v[2] if isinstance(v, list) else str(v)) for k, v in env.items()}
    return {}


def container_command(bundle: Path, target: str, port: int, tmp: Path) -> tuple[list[str], dict[str, str]]:
    env, copies, entrypoint, cmd = {}, {}, [], []
    for word, rest in instructions(bundle / "Dockerfile"):
        if word == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
        elif word == "COPY":
            src, dst = rest.split()[-2:]
            copies[dst.rstrip("/")] = bundle / src.rstrip("/")
        elif word == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif word == "CMD":
            cmd = json.loads(rest)
    env.update(platform_env(bundle, target))
    args = ["serve"] if target == "aws" else cmd  # SageMaker runs `docker run IMAGE serve`

    def host_path(value: str) -> str:
        for dst, src in copies.items():
            if value == dst or value.startswith(dst + "/"):
                return str(src) + value[len(dst):]
        return value

    env = {k: host_path(v) for k, v in env.items()}
    env.update(HOST="127.0.0.1", PORT=str(port), HF_HOME=str(tmp / "hf"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return [host_path(entrypoint[0]), *entrypoint[1:], *args], {**os.environ, **env}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, base: str, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"/health not 200 within {deadline_s}s")


@pytest.mark.parametrize("target", TARGETS)
def test_bundle_command_serves_chat(tmp_path, tiny_model, target):
    pytest.importorskip("openai")
    from openai import OpenAI

    model, adapter = tiny_model
    bundle = deploy(target, tmp_path / "bundle", str(model), {ADAPTER: str(adapter)}, name=NAME)
    port = free_port()
    argv, env = container_command(bundle, target, port, tmp_path)
    env.pop("TUNEFORGE_API_KEY", None)
    proc = subprocess.Popen(argv, env=env, cwd=bundle, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base)
        client = OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=60)
        assert {m.id for m in client.models.list().data} == {NAME, ADAPTER}
        for name in (NAME, ADAPTER):
            reply = client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": "Xin chào!"}], max_tokens=4, temperature=0)
            assert reply.model == name and reply.choices[0].finish_reason in ("stop", "length")
        if target == "aws":
            assert httpx.get(f"{base}/ping", timeout=5).status_code == 200
            body = {"model": ADAPTER, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
            r = httpx.post(f"{base}/invocations", json=body, timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["object"] == "chat.completion"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
