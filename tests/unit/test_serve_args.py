"""`tuneforge serve` and `tuneforge chat` refuse bad flags up front: exit 2, one message naming the flag, no model load."""

from __future__ import annotations

import socket

import pytest

from tuneforge import cli_args
from tuneforge.cli import main
from tuneforge.errors import UserError
from tuneforge.recipes import chat as chat_module
from tuneforge.recipes.serve import check_port_free, make_config


@pytest.fixture()
def no_loading(monkeypatch):
    """Fail the test if serve or chat gets as far as loading a model or starting the server."""
    import uvicorn

    from tuneforge.serve import app

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn started despite bad input"))
    monkeypatch.setattr(app, "create_app", lambda *a, **k: pytest.fail("the app was built despite bad input"))
    monkeypatch.setattr(chat_module, "load_engine", lambda *a, **k: pytest.fail("the model loaded despite bad input"))


@pytest.fixture()
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_serve_refuses_a_port_in_use_before_loading(busy_port, no_loading, capsys):
    assert main(["serve", "--port", str(busy_port)]) == 2
    out, err = capsys.readouterr()
    assert f"error: --port {busy_port} on 127.0.0.1 is in use; pick another --port or stop the process using it" in err
    assert "tuneforge serve: http" not in out  # no banner for a server that never starts


def test_the_port_check_leaves_the_port_free():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check_port_free("127.0.0.1", port)
    with socket.socket() as server:  # no SO_REUSEADDR: binds only if the test socket is really closed
        server.bind(("127.0.0.1", port))
        server.listen()


def test_serve_refuses_an_unknown_dtype(no_loading, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--dtype", "float64"])
    assert exit_.value.code == 2
    assert "argument --dtype: invalid choice: 'float64'" in capsys.readouterr().err
    with pytest.raises(UserError, match="--dtype"):
        make_config(dtype="float64")  # callers of serve() without the parser get the same refusal


def test_chat_refuses_an_unknown_dtype(no_loading, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["chat", "--dtype", "float64"])
    assert exit_.value.code == 2
    assert "argument --dtype: invalid choice: 'float64'" in capsys.readouterr().err


def test_chat_checks_the_adapter_folder_before_loading(tmp_path, no_loading, capsys):
    assert main(["chat", "--adapter", "/nonexistent/adapter"]) == 2
    err = capsys.readouterr().err
    assert "error: adapter '/nonexistent/adapter' does not exist: pass a run's adapter/ folder" in err
    assert "adapter=" not in err
    (tmp_path / "adapter").mkdir()
    assert main(["chat", "--adapter", str(tmp_path / "adapter")]) == 2
    assert f"error: adapter '{tmp_path / 'adapter'}' has no adapter_config.json" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--temperature", "-1"], "argument --temperature: must be a number >= 0 (0 = greedy), got -1"),
    (["--temperature", "nan"], "argument --temperature: must be a number >= 0"),
    (["--max-tokens", "0"], "argument --max-tokens: must be a whole number >= 1, got 0"),
    (["--max-tokens", "1.5"], "argument --max-tokens: '1.5' is not a whole number >= 1"),
    (["--top-p", "0"], "argument --top-p: must be a number above 0 and at most 1, got 0"),
    (["--top-p", "1.5"], "argument --top-p: must be a number above 0 and at most 1, got 1.5"),
])
def test_chat_refuses_out_of_range_sampling_flags(argv, message, no_loading, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["chat", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_chat_accepts_the_edges_of_each_range():
    import argparse

    parser = argparse.ArgumentParser()
    cli_args.chat(parser)
    args = parser.parse_args(["--temperature", "0", "--top-p", "1", "--max-tokens", "1"])
    assert (args.temperature, args.top_p, args.max_tokens) == (0.0, 1.0, 1)


def test_chat_called_directly_checks_sampling_too(no_loading):
    with pytest.raises(UserError, match="--temperature -1: must be a number >= 0"):
        chat_module.chat(temperature=-1)
    with pytest.raises(UserError, match="--max-tokens 0: must be a whole number >= 1"):
        chat_module.chat(max_tokens=0)


def test_vllm_engine_without_vllm_says_how_to_get_it(monkeypatch):
    import sys

    from tuneforge.serve.engines import load_engine
    from tuneforge.serve.settings import ServeConfig

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` fails, as where it is not installed
    with pytest.raises(UserError, match=r"make vllm-env.*\.venv-vllm/bin/tuneforge serve --engine vllm"):
        load_engine(ServeConfig(engine="vllm"))
