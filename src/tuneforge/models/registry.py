"""Names → sources. A model is a registry name, a local folder, or a Hugging Face hub id."""

from __future__ import annotations

import os
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.models.known import (
    DEFAULT_MODEL,
    KNOWN_MODELS,
    imported_folder,
    package_folder,
)


def resolve_model(name: str | None, *, do_import: bool = True) -> str:
    """Return a local folder or hub id that `from_pretrained` accepts; import embedded models on first use."""
    name = name or DEFAULT_MODEL
    tried = []
    key = name.lower()
    if key in KNOWN_MODELS:
        known = KNOWN_MODELS[key]
        if known.subdir:
            return str(package_folder(known) / known.subdir)
        folder = imported_folder(known)
        if (folder / "config.json").exists():
            return str(folder)
        if not do_import:
            return str(folder)
        from tuneforge.models.embedded import import_embedded

        return str(import_embedded(known))
    tried.append(f"registry names ({', '.join(KNOWN_MODELS)})")
    path = Path(name).expanduser()
    if path.is_file():
        kind = "a GGUF file" if path.suffix == ".gguf" else "a file"
        raise UserError(f"model '{name}' is {kind}; this takes a Hugging Face model folder or a registry name "
                        "(a .gguf is served by `tuneforge serve` and scored by `tuneforge compare`)")
    if path.is_dir():
        if (path / "config.json").exists() or (path / "adapter_config.json").exists():
            return str(path)
        tried.append(f"local folder {path} (exists but has no config.json)")
    else:
        tried.append(f"local folder {path} (not found)")
    # runs/x reads like a hub id; under a local folder of run folders (one holding a config.yaml run) it is a
    # path, so no network is tried. Any other org/name stays a hub id, even beside a folder named like the org.
    first = Path(name.split("/")[0])
    local_runs = first.is_dir() and any(first.glob("*/config.yaml"))
    looks_like_hub_id = name.count("/") == 1 and not name.startswith(("/", ".", "~")) and not local_runs
    if looks_like_hub_id and not path.exists():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
        if isinstance(cached, str):
            return name
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("1", "true", "True"):
            return name  # let transformers download it; its error is reported by load_model
        tried.append(f"hub id {name} (not in the local HF cache and HF_HUB_OFFLINE is set)")
    from tuneforge.runs import recipe_that_writes

    made_by = recipe_that_writes(path)  # runs/<name>/model of a shipped recipe
    advice = f"Make it first: {made_by}" if made_by else "Run `tuneforge models` to list known models"
    raise UserError(f"model '{name}' not found; tried: " + "; ".join(tried) + f". {advice}.")
