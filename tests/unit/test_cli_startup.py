"""`tuneforge --help` and every `tuneforge VERB --help` import none of the heavy libraries a verb runs on, and a
verb's flags still parse as before, with `--verbose` before or after the verb."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tuneforge import cli

HEAVY = ("torch", "transformers", "peft", "accelerate", "fastapi", "uvicorn", "matplotlib", "pandas")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# Every --help in one fresh interpreter; after each, which heavy modules that interpreter has imported so far.
EVERY_HELP = """
import contextlib, io, json, sys
from tuneforge import cli
heavy = {heavy!r}
found = {{}}
for argv in [["--help"]] + [[verb, "--help"] for verb in cli.VERBS]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            cli.main(argv)
            code = "returned"
        except SystemExit as e:
            code = e.code
    found[" ".join(argv)] = {{"code": code, "help": out.getvalue(),
                             "heavy": sorted(m for m in heavy if m in sys.modules)}}
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def every_help() -> dict:
    proc = subprocess.run([sys.executable, "-c", EVERY_HELP.format(heavy=HEAVY)], capture_output=True, text=True,
                          timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_help_of_the_cli_and_of_every_verb_imports_nothing_heavy(every_help):
    assert set(every_help) == {"--help", *(f"{verb} --help" for verb in cli.VERBS)}
    for argv, seen in every_help.items():
        assert seen["code"] == 0, (argv, seen["code"])
        assert seen["heavy"] == [], f"`tuneforge {argv}` imported {seen['heavy']}"
        verb = argv.removesuffix("--help").strip()
        assert seen["help"].startswith(f"usage: tuneforge {verb}".rstrip()), seen["help"][:200]


def test_each_verb_help_lists_its_own_flags(every_help):
    assert "--max-batch" in every_help["serve --help"]["help"]
    assert "--temperature" in every_help["chat --help"]["help"]
    assert "{docker,k8s,aws,gcp,azure}" in every_help["deploy --help"]["help"]
    assert "--kind {auto,causal,seq2seq,classifier,encoder}" in every_help["inspect --help"]["help"]
    assert "key=value overrides" in every_help["finetune --help"]["help"]
    assert all("--verbose" in seen["help"] for seen in every_help.values())


def test_python_m_tuneforge_cli_help():
    proc = subprocess.run([sys.executable, "-m", "tuneforge.cli", "--help"], capture_output=True, text=True,
                          timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(verb in proc.stdout for verb in cli.VERBS)


@pytest.mark.parametrize("argv, verbose", [
    (["inspect"], False),
    (["--verbose", "inspect"], True),
    (["inspect", "--verbose"], True),
    (["--verbose", "models", "import", "x"], True),
    (["models", "import", "x", "--verbose"], True),
    (["finetune", "recipe.yaml", "train.lr=1e-4"], False),
])
def test_verbose_before_or_after_the_verb(argv, verbose):
    assert cli.build_parser().parse_args(argv).verbose is verbose


def test_a_verb_parses_its_flags_and_refuses_bad_ones(capsys):
    args = cli.build_parser().parse_args(["serve", "--port", "9", "--adapter", "a=b", "--adapter", "c=d"])
    assert (args.port, args.adapter, args.engine, args.max_batch) == (9, ["a=b", "c=d"], "auto", 16)
    assert args._module == "tuneforge.recipes.serve"
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["inspect", "--batch-size", "0"])
    assert exit_.value.code == 2
    assert "argument --batch-size: 0 is too small" in capsys.readouterr().err
