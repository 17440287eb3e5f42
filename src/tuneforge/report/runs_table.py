"""`tuneforge runs`: every run folder under a folder, read from its files alone (no database).

A run folder is a folder holding config.yaml (or metrics.json, failed.json, checkpoints/); a folder without one is
looked into for run folders (runs/exp1/a), dot-folders (a write in progress) are passed over. Its status:

    complete     metrics.json (compare: compare.json), which every verb writes last; an export folder appears whole
    failed       failed.json: the command that last worked in it failed (cli.main writes the error there)
    interrupted  interrupted.json: stopped by Ctrl-C (cli.main writes it); or, in a folder from before those
                 markers, a checkpoint and no change for RUNNING_SECONDS. With a checkpoint: the command that resumes it
    running      none of those, and a file in it changed in the last RUNNING_SECONDS
    incomplete   none of those: stopped without a word (killed, or the machine went down), nothing to resume from
    unreadable   config.yaml missing or not YAML, or a JSON file above that is not JSON: the reason

The verb is config.yaml's `_verb` (recorded since `tuneforge runs` exists), else told from the config's keys.
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tuneforge.errors import UserError
from tuneforge.runs import FAILED, INTERRUPTED, SORT_KEYS, recipe_named, with_resume

RUNNING_SECONDS = 600  # a dev evaluation can write nothing for minutes; a run quiet for longer has stopped
STATUSES = ("complete", "interrupted", "failed", "running", "incomplete", "unreadable")
NUMERIC = ("before", "after", "tokens_s", "time")  # sorted largest first
RESUMABLE = ("finetune", "distill", "prune", "continual")  # the verbs whose training loop writes checkpoints
MARKERS = ("config.yaml", "metrics.json", FAILED, INTERRUPTED, "checkpoints", "compare.json")


class Unreadable(Exception):
    """A run file that is not what it should be; the run is listed with this as its reason."""


@dataclass
class Run:
    name: str  # the folder, relative to the listed folder
    path: Path
    status: str = "incomplete"
    why: str = ""  # unreadable: what is wrong; failed: the error
    verb: str | None = None
    task: str | None = None
    tasks: tuple[str, ...] = ()  # every task and stage name, for --task
    model: str | None = None
    method: str | None = None
    metric: str | None = None
    before: float | None = None
    after: float | None = None
    tokens_s: float | None = None
    time: float | None = None  # wall-clock seconds, config.yaml to the last file written
    started: float | None = None  # config.yaml's time (seconds since the epoch)
    step: int | None = None  # an unfinished run's last logged or saved step
    resume: str | None = None
    failed_command: str | None = None
    config: dict = field(default_factory=dict)
    metrics: dict | None = None


# -- reading one folder ---------------------------------------------------------------------------------

def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise Unreadable(f"{path.name} is not valid JSON ({e})") from None


def read_config(folder: Path) -> dict:
    path = folder / "config.yaml"
    if not path.is_file():
        raise Unreadable("no config.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        raise Unreadable(f"config.yaml is not valid YAML{f' (line {mark.line + 1})' if mark else ''}") from None
    if not isinstance(data, dict):
        raise Unreadable("config.yaml is not a mapping of keys")
    return data


def infer_verb(config: dict) -> str | None:
    """The verb that wrote a config.yaml without `_verb`, from the keys only that verb's config has."""
    keys = set(config)
    rules = [("stages", "continual"), ("models", "compare"), ("gguf_type", "export"), ("student", "distill"),
             ("kd", "distill"), ("prune", "prune"), ("group_size", "quantize"), ("parity", "quantize"),
             ("shot_seed", "prompt-eval"), ("strategies", "prompt-eval"), ("head", "finetune"), ("lora", "finetune"),
             ("train", "finetune")]
    for key, verb in rules:
        if key in keys:
            return verb
    return "evaluate" if {"task", "data"} <= keys else None


def primary_metric_of(task: str | None) -> str | None:
    """A task pack's primary metric (for files from before metrics.json named it)."""
    from tuneforge.tasks import TASKS

    if task not in TASKS:
        return None
    module, cls = TASKS[task]
    try:
        return getattr(importlib.import_module(module), cls).primary_metric
    except (ImportError, AttributeError):
        return None


def lower_is_better(metric: str | None) -> bool:
    from tuneforge.tasks.base import LOWER_IS_BETTER

    return metric in LOWER_IS_BETTER


def _task_name(section) -> str:
    return (section or {}).get("name", "sentiment") if isinstance(section, dict) else "sentiment"


def _of(scores, metric):
    value = scores.get(metric) if isinstance(scores, dict) and metric else None
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def describe(run: Run) -> None:
    """verb, task, model, method, primary metric before -> after and tokens/s from config.yaml + metrics.json."""
    c, m = run.config, run.metrics or {}
    run.verb = c.get("_verb") or infer_verb(c)
    run.model = c.get("model") or "default"
    run.task = m.get("task") or _task_name(c.get("task"))
    run.tasks = (run.task,)
    run.metric = m.get("primary_metric") or primary_metric_of(run.task)
    train = m.get("train") if isinstance(m.get("train"), dict) else {}
    run.tokens_s = _of(train, "tokens_per_second")
    run.before, run.after = _of(m.get("before"), run.metric), _of(m.get("after"), run.metric)
    verb = run.verb
    if verb == "finetune":
        run.method = c.get("method", "lora") + (" (head)" if c.get("head") == "classifier" else "")
    elif verb == "distill":
        student = c.get("student") or {}
        run.method = f"kd {student.get('model') or student.get('keep_blocks', 'every_other')}"
    elif verb == "prune":
        p = c.get("prune") or {}
        kind = p.get("method", "wanda")
        if kind in ("magnitude", "wanda"):
            pattern = p.get("pattern", "unstructured")
            kind += f" {pattern}" if pattern != "unstructured" else f" {p.get('sparsity', 0.5):.0%}"
        elif kind == "blocks":
            kind += f" -{p.get('remove', 0.25):g}"
        run.method = kind
        run.after = _of(m.get("recovered"), run.metric) if "recovered" in m else _of(m.get("pruned"), run.metric)
        run.tokens_s = _of(m.get("recovery"), "tokens_per_second")
    elif verb == "quantize":
        run.method = c.get("method", "int8_weight_only")
        run.tokens_s = _of(m.get("speed_after"), "decode_tok_s")  # the quantized model's decode speed
    elif verb == "evaluate":
        run.method = (c.get("eval") or {}).get("strategy", "zero_shot")
        run.after = _of(m.get("metrics"), run.metric)
    elif verb == "prompt-eval":
        scored = {k: _of(v, run.metric) for k, v in (m.get("strategies") or {}).items()}
        scored = {k: v for k, v in scored.items() if v is not None}
        if scored:
            pick = min if lower_is_better(run.metric) else max
            best = pick(scored, key=scored.get)
            run.method, run.after = f"best: {best}", scored[best]
    elif verb == "continual":
        describe_continual(run)
    elif verb == "compare":
        run.method = f"{len(c.get('models') or [])} models"
        run.metric = m.get("metric") or run.metric
        run.model = "-"
    elif verb == "export":
        gguf = c.get("format") in ("gguf", "gguf_adapter")  # gguf_adapter: the base's type
        run.method = c.get("format", "merged") + (f" {c.get('gguf_type', 'q8_0')}" if gguf else "")


def describe_continual(run: Run) -> None:
    c, m = run.config, run.metrics or {}
    stages = [s for s in c.get("stages") or [] if isinstance(s, dict)]
    run.task = "→".join(str(s.get("name")) for s in stages) or None
    run.tasks = (*(str(s.get("name")) for s in stages), *(_task_name(s.get("task")) for s in stages))
    strategy = (c.get("continual") or {}).get("strategy", "sequential")
    strategies = strategy if isinstance(strategy, list) else [strategy]
    run.method = strategies[0] if len(strategies) == 1 else f"{len(strategies)} strategies"
    run.metric = "average final"
    if "strategies" in m:  # several strategies: the table that compares them
        rows = [r for r in m["strategies"] if isinstance(r, dict)]
        finals = {str(r.get("strategy")): _of(r, "average final") for r in rows}
        finals = {k: v for k, v in finals.items() if v is not None}
        trained = {str(r.get("strategy", "")).split(" (")[0]: r for r in rows}  # routed/merged: one training
        if finals:
            best = max(finals, key=finals.get)
            run.method, run.after = f"{best} (best of {len(trained)})", finals[best]
        seconds = sum(_of(r, "train s") or 0 for r in trained.values())
        run.tokens_s = sum(_of(r, "tokens") or 0 for r in trained.values()) / seconds if seconds else None
    elif "ledgers" in m:
        finals = [_of((book or {}).get("summary"), "average_final") for book in m["ledgers"].values()]
        run.after = max((v for v in finals if v is not None), default=None)
        stage_runs = [s for s in m.get("stage_runs") or [] if isinstance(s, dict)]
        seconds = sum(_of(s, "seconds") or 0 for s in stage_runs)
        run.tokens_s = sum(_of(s, "tokens") or 0 for s in stage_runs) / seconds if seconds else None


def newest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint written last anywhere in the run (a continual run keeps them per stage)."""
    found = [p.parent for p in folder.glob("**/checkpoints/step-*/step.json") if p.parent.name[5:].isdigit()]
    return max(found, key=lambda p: (p.stat().st_mtime, int(p.name[5:])), default=None)


def last_logged(folder: Path) -> dict:
    """The last line of the training log written last (a continual run has one per stage)."""
    logs = sorted(folder.glob("**/metrics.jsonl"), key=lambda p: p.stat().st_mtime)
    for log in reversed(logs):
        for line in reversed(log.read_text(encoding="utf-8", errors="replace").splitlines()):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "step" in row:
                return row
    return {}


def newest_mtime(folder: Path) -> float:
    newest = folder.stat().st_mtime
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                newest = max(newest, os.stat(os.path.join(dirpath, name)).st_mtime)
            except OSError:
                continue
    return newest


def resume_command(run: Run, checkpoint: Path) -> str | None:
    """The command that goes on from `checkpoint`: the run's own command line (config.yaml's _command) with
    train.resume set, else the verb with the shipped recipe of that name, else with RECIPE.yaml to fill in."""
    if run.verb not in RESUMABLE:
        return None
    steps = (run.config.get("prune") or {}).get("steps", 1) if run.verb == "prune" else 1
    if (len(steps) if isinstance(steps, list) else steps) > 1:
        return None  # a prune.steps run cannot resume
    if run.config.get("_command"):
        return with_resume(shlex.split(run.config["_command"]), checkpoint)
    recipe = recipe_named(str(run.config.get("name", run.path.name)))
    return with_resume(["tuneforge", run.verb, recipe.as_posix() if recipe else "RECIPE.yaml"], checkpoint)


def settle_status(run: Run) -> None:
    folder = run.path
    marker = folder / ("compare.json" if run.verb == "compare" else "metrics.json")
    checkpoint = newest_checkpoint(folder)
    end = None
    if run.verb == "export" or marker.is_file():  # an export folder is renamed into place whole
        run.status, end = "complete", (marker if marker.is_file() else folder / "config.yaml").stat().st_mtime
    elif (folder / FAILED).is_file():
        failure = read_json(folder / FAILED)
        failure = failure if isinstance(failure, dict) else {}
        run.status, run.why = "failed", str(failure.get("error") or "(no message)")
        run.failed_command = failure.get("command")
        end = (folder / FAILED).stat().st_mtime
    elif (folder / INTERRUPTED).is_file():
        read_json(folder / INTERRUPTED)
        run.status, end = "interrupted", (folder / INTERRUPTED).stat().st_mtime
    else:
        end = newest_mtime(folder)
        if time.time() - end < RUNNING_SECONDS:
            run.status = "running"
        else:
            run.status = "interrupted" if checkpoint else "incomplete"
    if run.status != "complete":
        last = last_logged(folder)
        run.step = last.get("step") if isinstance(last.get("step"), int) else None
        if checkpoint is not None:
            run.step = int(checkpoint.name[5:]) if run.status == "interrupted" else run.step
            if run.status in ("interrupted", "failed"):
                run.resume = resume_command(run, checkpoint)
        run.tokens_s = run.tokens_s if run.tokens_s is not None else _of(last, "tokens_per_second")
        if run.before is None and (folder / "metrics_before.json").is_file():  # scored before training began
            run.before = _of(read_json(folder / "metrics_before.json"), run.metric)
    if run.started is not None and end is not None:
        run.time = max(0.0, end - run.started)


def read_run(folder: Path, root: Path) -> Run:
    """One run folder as a table row; a file that cannot be read makes it `unreadable`, never an error."""
    run = Run(name=folder.relative_to(root).as_posix() if folder != root else folder.name, path=folder)
    try:
        run.started = (folder / "config.yaml").stat().st_mtime if (folder / "config.yaml").is_file() else None
        run.config = read_config(folder)
        marker = folder / ("compare.json" if run.config.get("_verb", infer_verb(run.config)) == "compare"
                           else "metrics.json")
        if marker.is_file():
            metrics = read_json(marker)
            if not isinstance(metrics, dict):
                raise Unreadable(f"{marker.name} is not a JSON object")
            run.metrics = metrics
        describe(run)
        settle_status(run)
    except (Unreadable, OSError) as e:
        run.status, run.why = "unreadable", str(e)
    return run


def strategy_runs(run: Run) -> list[Run]:
    """--all: a continual run's strategy folders (runs/X/sequential, ...), each as a run of its own."""
    if run.verb != "continual" or run.status == "unreadable":
        return []
    found = []
    for folder in sorted(p for p in run.path.iterdir() if p.is_dir() and (p / "ledger.json").exists()):
        one = Run(name=f"{run.name}/{folder.name}", path=folder, started=run.started,
                  config={**run.config, "continual": {**(run.config.get("continual") or {}), "strategy": folder.name}})
        try:
            if (folder / "metrics.json").is_file():
                one.metrics = read_json(folder / "metrics.json")
            describe(one)
            settle_status(one)
        except (Unreadable, OSError) as e:
            one.status, one.why = "unreadable", str(e)
        found.append(one)
    return found


def read_folder(folder: Path) -> Run:
    """One run folder by its path, a continual run's strategy folder (runs/X/sequential) included."""
    if not (folder / "config.yaml").is_file() and (folder.parent / "config.yaml").is_file():
        parent = read_run(folder.parent, folder.parent.parent)
        match = [r for r in strategy_runs(parent) if r.path == folder]
        if match:
            return match[0]
    return read_run(folder, folder.parent)


# -- the folder of runs ----------------------------------------------------------------------------------

def is_run_folder(folder: Path) -> bool:
    return any((folder / name).exists() for name in MARKERS)


def run_folders(root: Path, depth: int = 3) -> list[Path]:
    found = []
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if is_run_folder(child):
            found.append(child)
        elif depth > 1:
            found += run_folders(child, depth - 1)
    return found


def check_root(root: Path) -> None:
    if not root.exists():
        raise UserError(f"{root} not found: pass the folder that holds your run folders (a recipe's output_dir; "
                        "default runs), e.g. `tuneforge runs runs`")
    if not root.is_dir():
        raise UserError(f"{root} is a file, not a folder: pass the folder that holds your run folders")


def read_runs(root: Path, *, nested: bool = False) -> list[Run]:
    """Every run under `root` (or `root` itself when it is one run folder)."""
    check_root(root)
    if is_run_folder(root):
        found = [read_run(root, root.parent)]
    else:
        found = [read_run(folder, root) for folder in run_folders(root)]
    if nested:
        found = [one for run in found for one in (run, *strategy_runs(run))]
    return found


def sort_key(key: str) -> tuple[str, bool]:
    """(--sort's column, whether it is turned round): a leading - turns it round; tokens/s is tokens_s."""
    flipped = key.startswith("-")
    key = key.lstrip("-").replace("/", "_").replace("tokens_per_second", "tokens_s")
    if key not in SORT_KEYS:
        raise UserError(f"--sort {key}: not a column; sort by one of {', '.join(SORT_KEYS)} "
                        "(a leading - turns it round: --sort=-time)")
    return key, flipped


def sort_runs(runs: list[Run], key: str = "started", reverse: bool = False) -> list[Run]:
    """Numbers largest first, text A to Z, `started` oldest first; runs without the value always last."""
    key, flipped = sort_key(key)
    present = [r for r in runs if getattr(r, key) not in (None, "")]
    missing = [r for r in runs if getattr(r, key) in (None, "")]
    if key in NUMERIC:
        present.sort(key=lambda r: getattr(r, key), reverse=True)
    elif key == "started":
        present.sort(key=lambda r: r.started)
    else:
        present.sort(key=lambda r: str(getattr(r, key)).lower())
    if flipped != reverse:
        present.reverse()
    return present + missing


def filter_runs(runs: list[Run], *, task: str | None = None, verb: str | None = None,
                status: str | None = None) -> list[Run]:
    if status is not None and status not in STATUSES:
        raise UserError(f"--status {status}: not a status; use one of {', '.join(STATUSES)}")
    return [r for r in runs if (task is None or task in r.tasks) and (verb is None or r.verb == verb)
            and (status is None or r.status == status)]


# -- printing ---------------------------------------------------------------------------------------------

def human_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def short(text: str | None, width: int = 28) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _number(value: float | None) -> str:
    from tuneforge.report import format_value

    return format_value(float(value)) if value is not None else ""


def status_text(run: Run) -> str:
    if run.status == "unreadable":
        return f"unreadable: {run.why}"
    if run.status in ("interrupted", "running") and run.step is not None:
        return f"{run.status} at step {run.step}"
    return run.status


def table_rows(runs: list[Run]) -> list[dict]:
    rows = []
    for r in runs:
        change = f"{_number(r.before)} → {_number(r.after)}" if r.before is not None else _number(r.after)
        rows.append({"run": r.name, "verb": r.verb or "?", "task": r.task, "model": short(r.model),
                     "method": r.method, "metric": r.metric, "before → after": change,
                     "tokens/s": round(r.tokens_s) if r.tokens_s is not None else None,
                     "time": human_seconds(r.time), "status": status_text(r)})
    return rows


def listing(runs: list[Run], root: Path, *, shown_of: int | None = None) -> str:
    """The table, a count by status, then each interrupted run's resume command and each failed run's error."""
    from tuneforge.report import format_table

    if not runs:
        return f"no run folders in {root}" if not shown_of else f"no runs match ({shown_of} in {root})"
    counts = Counter(r.status for r in runs)
    head = f"{len(runs)} run{'s' if len(runs) != 1 else ''} in {root}" + (f" (of {shown_of})" if shown_of else "")
    lines = [format_table(table_rows(runs)), "",
             head + ": " + ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])]
    resumable = [r for r in runs if r.status == "interrupted"]
    if resumable:
        lines += ["", "interrupted; resume with:"]
        lines += [f"  {r.name}: {r.resume or 'no checkpoint it can resume from: run the command again'}"
                  for r in resumable]
        if any("RECIPE.yaml" in (r.resume or "") for r in resumable):
            lines.append("  (RECIPE.yaml: the recipe the run was started with; this run's config.yaml predates "
                         "the recorded command)")
    failed = [r for r in runs if r.status == "failed"]
    if failed:
        lines += ["", "failed:"]
        for r in failed:
            error = r.why.splitlines() or [""]
            lines.append(f"  {r.name}: {error[0]}")
            lines += [f"    {more.strip()}" for more in error[1:6]] + (["    …"] if len(error) > 6 else [])
            if r.failed_command:
                lines.append(f"    ran: {r.failed_command}")
            if r.resume:
                lines.append(f"    resume from its last checkpoint: {r.resume}")
    return "\n".join(lines)
