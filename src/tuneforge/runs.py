"""Run folders: runs/<name>/ with the resolved config (versions, data hashes, the verb and command) written first.

A run folder's state is read from its files alone (`tuneforge runs`): metrics.json, written last, marks a
complete run; failed.json and interrupted.json, written here when the command stops early, a failed or
interrupted one (checkpoints/step-N is where an interrupted one resumes from).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import platform
import re
import shlex
import shutil
import sys
from pathlib import Path

import yaml

from tuneforge.fileio import write_json, write_text

PACKAGES = ("tuneforge", "torch", "transformers", "peft", "accelerate")


_started: list[Path] = []  # run folders this process created, for discard_unstarted_runs
_worked: list[Path] = []  # run folders this process created or went on with (train.resume), for end_stopped_command
command_line: list[str] | None = None  # the CLI's own words (set by cli.main), to print a resume command from
verb: str | None = None  # the verb cli.main is running, recorded in config.yaml as _verb

# `tuneforge runs --sort` keys (here, below the report that sorts by them, so the CLI's flags need no heavy import)
SORT_KEYS = ("started", "name", "verb", "task", "model", "method", "metric", "before", "after", "tokens_s", "time",
             "status")
FAILED = "failed.json"  # in a run folder: the command that last worked in it failed (error, time, command)
INTERRUPTED = "interrupted.json"  # ... was stopped by Ctrl-C (time, command)


def new_run_dir(cfg, *, reuse: bool = False) -> Path:
    """runs/<name>; if it exists and we are not resuming, runs/<name>-2, -3, ... so no earlier work is lost."""
    base = Path(cfg.output_dir) / cfg.name
    path, n = base, 2
    while True:
        try:  # claimed atomically: two runs of one name never share (or discard) one folder
            path.mkdir(parents=True, exist_ok=False)
            _started.append(path)
            _worked.append(path)
            break
        except FileExistsError:
            if reuse:
                continue_run(path)
                break
            path = base.with_name(f"{base.name}-{n}")
            n += 1
    write_text(path / "config.yaml", resolved_config_yaml(cfg))
    return path


def resumed_run_dir(cfg) -> Path | None:
    """The run folder train.resume points into: runs/<name> for 'latest', else the checkpoint's own run."""
    resume = getattr(getattr(cfg, "train", None), "resume", None)
    if not resume:
        return None
    if resume == "latest":
        return Path(cfg.output_dir) / cfg.name
    return Path(resume).resolve().parent.parent  # runs/<name>/checkpoints/step-N


def run_dir_for(cfg) -> Path:
    """A resumed run continues in its own folder (its config.yaml kept as the run started); else a new one."""
    folder = resumed_run_dir(cfg)
    if folder is None:
        return new_run_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    continue_run(folder)
    return folder


def continue_run(folder: Path) -> None:
    """This command goes on with an earlier run in `folder` (train.resume): how an earlier command there ended
    no longer stands, and how this one ends is recorded there."""
    (folder / FAILED).unlink(missing_ok=True)
    (folder / INTERRUPTED).unlink(missing_ok=True)
    _worked.append(folder)


def discard_unstarted_runs() -> list[Path]:
    """After a failed command: remove the run folders it created that hold nothing but config.yaml, so a
    problem found after the folder was made leaves nothing that looks like a run. Any other file (a
    checkpoint, a metrics line) is work, and its folder stays."""
    removed = []
    for path in _started:
        if path.is_dir() and [p.name for p in path.iterdir()] == ["config.yaml"]:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    _started.clear()
    return removed


def end_stopped_command(error: BaseException | None) -> list[Path]:
    """cli.main after a command stopped early: drop the run folders it left empty, then write failed.json
    (`error`) or, for a Ctrl-C (None), interrupted.json into each run folder it worked in that is kept, so
    `tuneforge runs` can tell a failed or stopped run from one still going. Returns those folders."""
    if "tuneforge.tracking" in sys.modules:  # (imported only by a command that trained) trackers: FAILED / KILLED
        sys.modules["tuneforge.tracking"].end_open_runs("KILLED" if error is None else "FAILED")
    discard_unstarted_runs()
    folders = list(dict.fromkeys(p for p in _worked if p.is_dir()))
    _worked.clear()
    record = {"time": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
              "command": shlex.join(command_line) if command_line else None}
    if error is not None:
        message = str(error) if type(error).__name__ == "UserError" else f"{type(error).__name__}: {error}"
        record = {"error": message, "type": type(error).__name__, **record}
    for folder in folders:
        write_json(folder / (INTERRUPTED if error is None else FAILED), record)
    return folders


def with_resume(words: list[str], checkpoint) -> str:
    """A command line with train.resume set to `checkpoint` (any train.resume it had replaced)."""
    return shlex.join([*(a for a in words if not a.startswith("train.resume=")), f"train.resume={checkpoint}"])


def resolved_config_yaml(cfg) -> str:
    data = cfg.model_dump(mode="json")
    data["_versions"] = {p: _version(p) for p in PACKAGES} | {"python": platform.python_version()}
    data["_data_sha256"] = data_hashes(cfg)
    if verb:  # the CLI's verb and words, so a listing names the verb and the command that resumes the run
        data["_verb"] = verb
    if command_line:
        data["_command"] = shlex.join(command_line)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def data_hashes(cfg) -> dict[str, str]:
    out = {}
    data = getattr(cfg, "data", None)
    for split in ("train", "dev"):
        spec = getattr(data, split, None) if data else None
        if spec is None:
            continue
        path = Path(spec.path)
        files = [path / f for f in spec.files.values()] if path.is_dir() else [path]
        h = hashlib.sha256()
        for f in files:
            if f.is_file():
                h.update(f.read_bytes())
        out[split] = h.hexdigest()[:16]
    return out


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def recipe_hint(adapter: Path, recipes: Path = Path("recipes")) -> str:
    """', or make this one first: `tuneforge finetune recipes/x.yaml` writes runs/x/adapter', or ''."""
    made_by = recipe_that_writes(adapter, recipes)
    return f", or make this one first: {made_by}" if made_by else ""


def recipe_that_writes(folder: Path, recipes: Path = Path("recipes")) -> str | None:
    """For runs/<name>/adapter (or /model): the shipped recipe whose `name:` is <name> and that writes that
    folder, as "`tuneforge VERB recipes/x.yaml` writes runs/<name>/adapter"."""
    if folder.name not in ("adapter", "model"):
        return None
    recipe = recipe_named(folder.parent.name, recipes)
    if recipe is None:
        return None
    text = recipe.read_text(encoding="utf-8")
    found = re.search(rf"tuneforge (\w+) {re.escape(recipe.as_posix())}", text)
    verb = found.group(1) if found else "finetune"
    method = re.search(r"^method:\s*(\w+)", text, re.M)
    lora = verb == "finetune" and (method is None or method.group(1) in ("lora", "qlora"))
    if folder.name != ("adapter" if lora else "model"):  # the recipe writes the other folder
        return None
    return f"`tuneforge {verb} {recipe.as_posix()}` writes {folder.as_posix()}"


def recipe_named(run_name: str, recipes: Path = Path("recipes")) -> Path | None:
    """The shipped recipe whose `name:` is `run_name` (the first, A to Z), or None."""
    if not recipes.is_dir():
        return None
    for recipe in sorted(recipes.glob("*.yaml")):
        if re.search(rf"^name:\s*{re.escape(run_name)}\s*(#.*)?$", recipe.read_text(encoding="utf-8"), re.M):
            return recipe
    return None


def complete_run(run_dir: Path, metrics: dict) -> Path:
    """Write metrics.json, a run's last file: its presence marks the run complete. The run's trackers
    (train.report_to) get the final metrics and the report's images, and end."""
    from tuneforge.tracking import finish_run

    path = write_json(Path(run_dir) / "metrics.json", metrics)
    finish_run(Path(run_dir), metrics)
    return path
