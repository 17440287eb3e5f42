"""Run folders: runs/<name>/ with the resolved config (versions, data hashes) written first."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import re
import shutil
from pathlib import Path

import yaml

from tuneforge.fileio import write_text

PACKAGES = ("tuneforge", "torch", "transformers", "peft", "accelerate")


_started: list[Path] = []  # run folders this process created, for discard_unstarted_runs
command_line: list[str] | None = None  # the CLI's own words (set by cli.main), to print a resume command from


def new_run_dir(cfg, *, reuse: bool = False) -> Path:
    """runs/<name>; if it exists and we are not resuming, runs/<name>-2, -3, ... so no earlier work is lost."""
    base = Path(cfg.output_dir) / cfg.name
    path, n = base, 2
    while True:
        try:  # claimed atomically: two runs of one name never share (or discard) one folder
            path.mkdir(parents=True, exist_ok=False)
            _started.append(path)
            break
        except FileExistsError:
            if reuse:
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
    return folder


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


def resolved_config_yaml(cfg) -> str:
    data = cfg.model_dump(mode="json")
    data["_versions"] = {p: _version(p) for p in PACKAGES} | {"python": platform.python_version()}
    data["_data_sha256"] = data_hashes(cfg)
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
    if folder.name not in ("adapter", "model") or not recipes.is_dir():
        return None
    run_name = folder.parent.name
    for recipe in sorted(recipes.glob("*.yaml")):
        text = recipe.read_text(encoding="utf-8")
        if re.search(rf"^name:\s*{re.escape(run_name)}\s*(#.*)?$", text, re.M):
            found = re.search(rf"tuneforge (\w+) {re.escape(recipe.as_posix())}", text)
            verb = found.group(1) if found else "finetune"
            method = re.search(r"^method:\s*(\w+)", text, re.M)
            lora = verb == "finetune" and (method is None or method.group(1) in ("lora", "qlora"))
            if folder.name != ("adapter" if lora else "model"):  # the recipe writes the other folder
                return None
            return f"`tuneforge {verb} {recipe.as_posix()}` writes {folder.as_posix()}"
    return None


def complete_run(run_dir: Path, metrics: dict) -> Path:
    """Write metrics.json, a run's last file: its presence marks the run complete. The run's trackers
    (train.report_to) get the final metrics and the report's images, and end."""
    from tuneforge.fileio import write_json
    from tuneforge.tracking import finish_run

    path = write_json(Path(run_dir) / "metrics.json", metrics)
    finish_run(Path(run_dir), metrics)
    return path
