"""A command prints tuneforge's own output; other libraries' warnings, log lines below ERROR and progress bars
show only with --verbose."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# Two modules made on the spot, one named like a third-party library and one like a tuneforge module; each warns,
# logs and draws a bar. `otherlib.blame_caller` warns with stacklevel=2, so Python names tuneforge's line as the
# place of that warning: it is still the library's.
SPEAKERS = """
import sys, types, warnings
from tuneforge.quiet import quiet

SPEAK = '''
import logging, warnings
from tqdm import tqdm

def speak(tag):
    warnings.warn(tag + "-userwarning", UserWarning)
    warnings.warn(tag + "-futurewarning", FutureWarning)
    logging.getLogger(__name__).warning(tag + "-log-warning")
    logging.getLogger(__name__).error(tag + "-log-error")
    for _ in tqdm(range(2), desc=tag + "-bar"):
        pass

def blame_caller(tag):
    warnings.warn(tag + "-blamed", DeprecationWarning, stacklevel=2)
'''

def module(name):
    mod = types.ModuleType(name)
    exec(SPEAK, mod.__dict__)
    return mod

other, ours = module("otherlib.sub"), module("tuneforge.fake")
ours.other = other
exec("def call_other():\\n    other.blame_caller('other')\\n", ours.__dict__)
warnings.simplefilter("always")
with quiet(verbose=sys.argv[1] == "verbose"):
    other.speak("other")
    ours.speak("ours")
    ours.call_other()
    print("inside-done", file=sys.stderr)
other.speak("after")
"""


def speakers(mode: str) -> str:
    proc = subprocess.run([sys.executable, "-c", SPEAKERS, mode], capture_output=True, text=True, timeout=120,
                          env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    inside, _, after = proc.stderr.partition("inside-done")
    assert after, proc.stderr
    return inside


def test_quiet_hides_other_libraries_warnings_logs_and_bars_but_not_ours():
    inside = speakers("quiet")
    for hidden in ("other-userwarning", "other-futurewarning", "other-log-warning", "other-bar", "other-blamed"):
        assert hidden not in inside, (hidden, inside)
    for kept in ("other-log-error", "ours-userwarning", "ours-futurewarning", "ours-log-warning", "ours-log-error",
                 "ours-bar"):
        assert kept in inside, (kept, inside)


def test_verbose_shows_everything():
    inside = speakers("verbose")
    for kept in ("other-userwarning", "other-futurewarning", "other-log-warning", "other-log-error", "other-bar",
                 "other-blamed", "ours-userwarning", "ours-log-warning", "ours-bar"):
        assert kept in inside, (kept, inside)


def test_leaving_quiet_puts_everything_back():
    proc = subprocess.run([sys.executable, "-c", SPEAKERS, "quiet"], capture_output=True, text=True, timeout=120,
                          env=ENV)
    after = proc.stderr.partition("inside-done")[2]
    for shown in ("after-userwarning", "after-log-warning", "after-bar"):
        assert shown in after, (shown, after)


@pytest.mark.parametrize("flag", [[], ["--verbose"]])
def test_a_real_command_hides_transformers_loading_bar_unless_verbose(tiny_llama_dir, tmp_path, flag):
    png = tmp_path / "attention.png"
    proc = subprocess.run([sys.executable, "-m", "tuneforge.cli", "inspect", str(tiny_llama_dir), "--attention", "hi",
                           "--out", str(png), *flag], capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"attention maps: {png}" in proc.stdout and png.is_file()
    assert ("Loading weights" in proc.stderr) is bool(flag), proc.stderr[-2000:]
