"""Write a deploy bundle: one image (Dockerfiles, entrypoint, tuneforge source, model) plus a platform's manifests.

Every bundle shares one model layout, the one SageMaker's model.tar.gz and the vLLM containers expect:
`model/` holds the base model's files and `model/adapters/NAME/` each LoRA adapter. The container finds it
at $MODEL_DIR (/models in the image; /opt/ml/model on SageMaker when it comes from S3).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tuneforge.compress.quant.llamacpp import has_gguf_magic
from tuneforge.deploy.checks import check_files
from tuneforge.errors import UserError
from tuneforge.fileio import atomic_dir, nearest_existing
from tuneforge.models.adapters import check_adapter

TARGETS = ("docker", "k8s", "aws", "gcp", "azure")
ENGINES = ("transformers", "llamacpp", "vllm")
PORT = 8080                  # SageMaker requires 8080; the other platforms are told the same port
MODEL_DIR = "/models"        # where the image (or a mounted volume) holds model/
VLLM_IMAGE = "vllm/vllm-openai:v0.33.0"
TEMPLATES = Path(__file__).parent / "templates"

# Lower-case DNS label short enough for every platform (Azure endpoints allow 32 characters, k8s 63).
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")
# Adapter names become folder names and the request's `model` field; letters of any script are fine.
ADAPTER_RE = re.compile(r"^\w[\w.-]*$")
HUB_ID_RE = re.compile(r"^[\w.-]+/[\w.-]+$", re.ASCII)

# Files each target adds to the common image files (template under templates/, path in the bundle).
TARGET_FILES = {
    "docker": [("docker/compose.yaml.j2", "compose.yaml")],
    "k8s": [
        ("k8s/deployment.yaml.j2", "k8s/deployment.yaml"),
        ("k8s/service.yaml.j2", "k8s/service.yaml"),
        ("k8s/hpa.yaml.j2", "k8s/hpa.yaml"),
        ("k8s/pvc.yaml.j2", "k8s/pvc.yaml"),                     # mount only
        ("k8s/model-loader.yaml.j2", "model-loader.yaml"),       # mount only
        ("k8s/inferenceservice.yaml.j2", "kserve/inferenceservice.yaml"),
    ],
    "aws": [("aws/sagemaker.yaml.j2", "cloudformation.yaml")],
    "gcp": [("gcp/cloudrun.yaml.j2", "cloudrun.yaml"), ("gcp/vertex-deploy.sh.j2", "vertex-deploy.sh")],
    "azure": [
        ("azure/endpoint.yml.j2", "azureml/endpoint.yml"),
        ("azure/deployment.yml.j2", "azureml/deployment.yml"),
        ("azure/containerapp.yaml.j2", "containerapp.yaml"),
    ],
}
MOUNT_ONLY = {"k8s/pvc.yaml", "model-loader.yaml"}

# Written into every bundle: --out is replaced only when it is empty or holds this file (a bundle deploy wrote).
MARKER = ".tuneforge-bundle"
MARKER_TEXT = "Written by `tuneforge deploy`; the next deploy to this folder replaces all of it.\n"
# What a bundle written before the marker existed holds at its top level; only such a folder counts as one.
BUNDLE_ENTRIES = {"Dockerfile", "Dockerfile.cuda", ".dockerignore", "entrypoint.sh", "README.md", "model",
                  "tuneforge-src"} | {out.split("/")[0] for files in TARGET_FILES.values() for _, out in files}


@dataclass(frozen=True)
class Plan:
    """Everything the templates need, decided once from the user's options."""

    target: str
    name: str
    image: str
    gpu: bool
    bake: bool
    engine: str
    model_kind: str                  # folder | gguf | hub
    model_source: str                # local path, or hub id
    adapters: tuple[tuple[str, str], ...] = ()   # (name, local folder)
    model_bytes: int = 0
    tuneforge_version: str = "0.0.0"
    source_root: str | None = None   # a tuneforge source checkout to copy into the image
    torch_version: str = "2.13.0"

    @property
    def model_arg(self) -> str:
        """What follows `tuneforge serve` inside the container (shell syntax, $MODEL_DIR expands there)."""
        if self.model_kind == "hub":
            return self.model_source
        if self.model_kind == "gguf":
            return "$MODEL_DIR/" + Path(self.model_source).name
        return "$MODEL_DIR"

    @property
    def dockerfile(self) -> str:
        return "Dockerfile.cuda" if self.gpu else "Dockerfile"

    @property
    def memory_gi(self) -> int:
        """Container memory: weights twice (load + runtime copies) plus a margin; GPU hosts need more headroom."""
        need = math.ceil(2 * self.model_bytes / 2**30) + 2
        return max(need, 16 if self.gpu else 4)


def deploy(
    target: str,
    out: str | Path,
    model: str | None = None,
    adapters=(),
    *,
    gpu: bool = False,
    bake: bool = True,
    name: str = "tuneforge-chat",
    image: str | None = None,
    engine: str | None = None,
) -> Path:
    """Write the bundle for `target` into `out` (replaced atomically) and return its path."""
    out = check_out(out)
    plan = make_plan(target, model, adapters, gpu=gpu, bake=bake, name=name, image=image, engine=engine)
    files = render(plan)
    problems = check_files(files)
    if problems:  # a template bug, not the user's: fail before anything is written
        raise RuntimeError("deploy templates rendered invalid files:\n" + "\n".join(problems))
    with atomic_dir(out) as tmp:
        (tmp / MARKER).write_text(MARKER_TEXT, encoding="utf-8")
        for rel, text in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        for script in ("entrypoint.sh", "vertex-deploy.sh"):
            if (tmp / script).exists():
                (tmp / script).chmod(0o755)
        if plan.model_kind != "hub":
            assemble_model(plan, tmp / "model")
        if plan.source_root:
            copy_source(Path(plan.source_root), tmp / "tuneforge-src")
        check_out(out)  # again: files may have appeared in --out while the model was copied
    return out


def check_out(out: str | Path) -> Path:
    """Refuse an --out that is a file, lies under a file, or is a folder of other files (replacing it loses them)."""
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; choose a new folder for the bundle")
    parent = nearest_existing(path.absolute().parent)  # must be a folder --out can be made (or replaced) in
    if not parent.is_dir():
        raise UserError(f"--out {out}: {parent} is a file, so no folder can be made under it; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: cannot write in {parent}; choose a folder you can write to")
    if path.is_dir() and not is_bundle_or_empty(path):
        raise UserError(f"--out {out} holds other files (not a bundle `tuneforge deploy` wrote); "
                        "choose a new folder or empty it")
    return path


def is_bundle_or_empty(folder: Path) -> bool:
    """True for an empty folder or one a deploy wrote: with the marker, or (older bundles) only bundle files."""
    names = {p.name for p in folder.iterdir()}
    if not names or MARKER in names:
        return True
    if not ({"Dockerfile", "entrypoint.sh"} <= names and names <= BUNDLE_ENTRIES):
        return False
    entry = folder / "entrypoint.sh"  # and the entrypoint deploy writes, not a hand-written one
    return entry.is_file() and "exec tuneforge serve" in entry.read_text(encoding="utf-8", errors="replace")


def make_plan(target, model, adapters, *, gpu, bake, name, image, engine) -> Plan:
    if target not in TARGETS:
        raise UserError(f"--target '{target}' is not one of {', '.join(TARGETS)}")
    if not NAME_RE.match(name or ""):
        raise UserError(
            f"--name '{name}' must be 3-32 characters of lower-case letters, digits and '-', starting with a letter "
            "(a name every platform accepts for endpoints and services)"
        )
    kind, source, size = locate_model(model)
    pairs = parse_adapters(adapters)
    size += sum(folder_bytes(Path(p)) for _, p in pairs)
    engine = pick_engine(engine, kind, gpu)
    if pairs and kind == "gguf":
        raise UserError("--adapter needs an HF model folder; a .gguf model has its adapters merged at export time")
    return Plan(
        target=target, name=name, image=image or f"{name}:{tuneforge_version()}", gpu=gpu, bake=bake,
        engine=engine, model_kind=kind, model_source=source, adapters=tuple(pairs), model_bytes=size,
        tuneforge_version=tuneforge_version(), source_root=source_checkout(), torch_version=torch_version(),
    )


def locate_model(model: str | None) -> tuple[str, str, int]:
    """(kind, source, bytes): a local HF folder, a local .gguf file, or a hub id the container downloads."""
    path = Path(model).expanduser() if model else None
    if path is not None and path.is_file():
        if path.suffix != ".gguf":
            raise UserError(f"--model {model}: a model file must be a .gguf export; otherwise pass an HF folder")
        try:
            is_gguf = has_gguf_magic(path)
        except OSError as e:
            raise UserError(f"--model {model}: cannot read it ({e.strerror})") from e
        if not is_gguf:
            raise UserError(f"--model {model}: not a GGUF file (it does not start with the GGUF magic bytes); "
                            "pass a .gguf written by `tuneforge export` or an HF model folder")
        return "gguf", str(path.resolve()), path.stat().st_size
    from tuneforge.models import resolve_model

    source = resolve_model(model)
    folder = Path(source)
    if folder.is_dir():
        if not (folder / "config.json").exists():
            raise UserError(
                f"--model {model}: {folder} has no config.json; deploy a full model folder "
                "(a LoRA adapter goes in --adapter NAME=PATH, or merge it first with `tuneforge export`)"
            )
        return "folder", str(folder.resolve()), folder_bytes(folder)
    if not HUB_ID_RE.match(source):
        raise UserError(f"--model '{model}' is neither a local folder, a .gguf file nor a hub id like org/name")
    return "hub", source, 0


def parse_adapters(adapters) -> list[tuple[str, str]]:
    """Accept {'name': path}, ['name=path', ...] or [(name, path), ...]; every folder must hold a PEFT adapter."""
    items = adapters.items() if hasattr(adapters, "items") else adapters
    pairs, seen = [], set()
    for item in items:
        if isinstance(item, str):
            if "=" not in item:
                raise UserError(f"--adapter '{item}' must be NAME=PATH, e.g. --adapter support=runs/sst2/adapter")
            item = item.split("=", 1)
        name, path = str(item[0]).strip(), Path(item[1]).expanduser()
        if not ADAPTER_RE.match(name) or name == "adapters":
            raise UserError(f"--adapter name '{name}' must be letters, digits, '.', '_' or '-' (no spaces or '/')")
        if name in seen:
            raise UserError(f"--adapter name '{name}' is given twice; each adapter needs its own name")
        check_adapter(path, name)
        seen.add(name)
        pairs.append((name, str(path.resolve())))
    return pairs


def pick_engine(engine: str | None, kind: str, gpu: bool) -> str:
    if engine is not None and engine not in ENGINES:
        raise UserError(f"--engine '{engine}' is not one of {', '.join(ENGINES)}")
    if gpu:
        if kind == "gguf":
            raise UserError("--gpu bundles serve an HF folder with vLLM; pass the merged export, not a .gguf")
        if engine not in (None, "vllm"):
            raise UserError(f"--gpu bundles serve with vLLM; drop --engine {engine} or drop --gpu")
        return "vllm"
    if kind == "gguf":
        if engine not in (None, "llamacpp"):
            raise UserError(f"a .gguf model is served by the llamacpp engine, not --engine {engine}")
        return "llamacpp"
    if engine == "vllm":
        raise UserError("--engine vllm needs a GPU: add --gpu (CPU bundles use transformers or llamacpp)")
    if engine == "llamacpp":
        raise UserError("--engine llamacpp serves a .gguf file: pass --model path/to/model.gguf")
    return "transformers"


def render(plan: Plan) -> dict[str, str]:
    """Render every file of the bundle (bundle path -> text); nothing is written here."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
    )
    # Values typed by the user are quoted for the file's own syntax, so Vietnamese names stay readable.
    env.filters["q"] = lambda s: json.dumps(str(s), ensure_ascii=False)
    env.filters["sh"] = lambda s: shlex.quote(str(s))
    ctx = {"p": plan, "port": PORT, "model_dir": MODEL_DIR, "vllm_image": VLLM_IMAGE}
    pairs = [("common/Dockerfile.j2", "Dockerfile"), ("common/dockerignore.j2", ".dockerignore"),
             ("common/entrypoint.sh.j2", "entrypoint.sh")]
    if plan.model_kind != "gguf":
        pairs.append(("common/Dockerfile.cuda.j2", "Dockerfile.cuda"))
    pairs += [(t, o) for t, o in TARGET_FILES[plan.target] if not (plan.bake and o in MOUNT_ONLY)]
    pairs.append((f"{plan.target}/README.md.j2", "README.md"))
    return {out: env.get_template(tpl).render(**ctx) for tpl, out in pairs}


def assemble_model(plan: Plan, dest: Path) -> None:
    """Copy the model and adapters into the bundle's model/ layout, readable by the image's non-root user."""
    if plan.model_kind == "gguf":
        dest.mkdir(parents=True)
        shutil.copyfile(plan.model_source, dest / Path(plan.model_source).name)
    else:
        shutil.copytree(plan.model_source, dest, copy_function=shutil.copyfile,
                        ignore=shutil.ignore_patterns(".*", "__pycache__", "tuneforge_source.json"))
    for name, folder in plan.adapters:
        shutil.copytree(folder, dest / "adapters" / name, copy_function=shutil.copyfile,
                        ignore=shutil.ignore_patterns(".*", "__pycache__", "checkpoint-*"))
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def copy_source(root: Path, dest: Path) -> None:
    """Copy the installable tuneforge source (pyproject + src/tuneforge) so the image needs no package index entry."""
    dest.mkdir(parents=True)
    shutil.copyfile(root / "pyproject.toml", dest / "pyproject.toml")
    readme = root / "README.md"
    if readme.exists():
        shutil.copyfile(readme, dest / "README.md")
    else:  # pyproject names it as the long description; the build fails without one
        (dest / "README.md").write_text("tuneforge\n", encoding="utf-8")
    shutil.copytree(root / "src" / "tuneforge", dest / "src" / "tuneforge",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))


def source_checkout() -> str | None:
    """The repository root when tuneforge runs from a source checkout (editable install), else None."""
    import tuneforge

    root = Path(tuneforge.__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if pyproject.exists() and 'name = "tuneforge"' in pyproject.read_text(encoding="utf-8"):
        return str(root)
    return None


def tuneforge_version() -> str:
    try:
        return version("tuneforge")
    except PackageNotFoundError:
        return "0.0.0"


def torch_version() -> str:
    """The torch the CPU image installs: the one tuneforge runs with here, without the local +cpu tag."""
    try:
        return version("torch").split("+")[0]
    except PackageNotFoundError:
        return "2.13.0"


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
