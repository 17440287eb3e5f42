"""Run one `tuneforge` command in its own process and return its peak resident set size (shared by benchmarks)."""

from __future__ import annotations

import os
import subprocess
import sys


def run_tuneforge(args: list[str], what: str) -> float:
    """Peak RSS in GB of `python -m tuneforge.cli ARGS`; exits with the run's stderr tail if it fails."""
    proc = subprocess.Popen([sys.executable, "-m", "tuneforge.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()  # drained first, so a chatty run cannot block on a full pipe
    _, status, usage = os.wait4(proc.pid, 0)  # wait4, not Popen.wait: it also returns this child's own peak RSS
    code = proc.returncode = os.waitstatus_to_exitcode(status)  # Popen would otherwise think it still runs
    if code:
        sys.exit(f"{what} failed (exit {code}):\n{err[-2000:]}")
    return usage.ru_maxrss / 2**20
