"""Run one `tuneforge` command in its own process and return its peak resident set size (shared by benchmarks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


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


def run_short(verb: str, config: str, overrides: list[str], *, steps: int, out: Path, name: str, what: str) -> tuple[float, dict]:
    """`tuneforge VERB CONFIG` cut to `steps` training steps of 8 rows and 8 dev rows, in out/name:
    (peak RSS in GB, the run's metrics.json)."""
    short = [f"train.max_steps={steps}", f"data.train.limit={steps * 8}", "eval_before=false", "eval.limit=8",
             f"output_dir={out}", f"name={name}"]
    peak = run_tuneforge([verb, config, *overrides, *short], what)
    return peak, json.loads((out / name / "metrics.json").read_text())
