"""Typed config models, YAML + key=value overrides, and error collection.

Every key is declared once here with its type, default and a one-line description. A config file is
validated before any work starts and every problem is reported at once, each naming the key as typed.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneforge.config.data import DataSpec
from tuneforge.errors import UserError

# Weight dtypes a model loads in. Declared here, the lowest layer that needs them; models.dtypes imports them.
DTYPES = ("auto", "bfloat16", "float16", "float32")


# train.report_to: the modules each tracker needs (MLflow's default store is a SQLite file: sqlalchemy + alembic).
TRACKER_MODULES = {"tensorboard": ("tensorboard",), "mlflow": ("mlflow", "sqlalchemy", "alembic"), "wandb": ("wandb",)}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskConfig(BaseModel):
    """`name` picks the task pack; any other key is an option of that pack (checked by get_task)."""

    model_config = ConfigDict(extra="allow")
    name: str = Field("sentiment", description="sentiment | translation | summarization | qa | chat")

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DataConfig(Section):
    train: DataSpec | None = Field(None, description="training split")
    dev: DataSpec | None = Field(None, description="dev split: evaluation during and after training")


class LoraConfig(Section):
    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: float = Field(32, gt=0, description="LoRA alpha (scale = alpha / r, or alpha / sqrt(r) with rsLoRA)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: str | list[str] = Field("all-linear", description="'all-linear' or module names, e.g. [q_proj, v_proj]")
    use_rslora: bool = Field(False, description="rank-stabilised scaling alpha/sqrt(r)")
    use_dora: bool = Field(False, description="weight-decomposed LoRA (DoRA); slower")


class FreezeConfig(Section):
    trainable_blocks: int = Field(2, ge=0, description="method=freeze: train only the top N transformer blocks (an encoder-decoder's: "
                                  "decoder blocks), the final norm and the head")


class TrainConfig(Section):
    epochs: float = Field(1.0, gt=0, description="passes over the training rows (fractions allowed)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs)")
    batch_size: int = Field(8, ge=1, description="rows per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(2e-4, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="fraction of steps with linear warmup")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="decay after warmup")
    max_grad_norm: float | None = Field(1.0, description="gradient clipping; null to disable")
    max_seq_len: int = Field(512, ge=8, description="longer examples are truncated from the source side")
    seed: int = Field(0, description="seeds data order, dropout and init")
    bf16: Literal["auto", "true", "false"] = Field("auto", description="bf16 autocast: auto = where the CPU/GPU supports it")
    share_prefix: bool = Field(True, description="run the prompt prefix all rows of a batch share once per batch (exact); "
                               "decoder-only models (off for encoder-decoder ones)")
    group_by_length: bool = Field(True, description="batch rows of similar length (less padding); false: random batches")
    log_every: int = Field(5, ge=1, description="optimizer steps between metrics.jsonl lines")
    eval_every: int = Field(0, ge=0, description="optimizer steps between dev evaluations (0: only at the end)")
    save_every: int = Field(0, ge=0, description="optimizer steps between checkpoints (0: only on interrupt)")
    resume: str | None = Field(None, description="a checkpoint folder, or 'latest' for the newest one of this run")
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list, description="trackers that also get the run (besides metrics.jsonl and the report): "
        "tensorboard (runs/NAME/tb), mlflow ($MLFLOW_TRACKING_URI, else ./mlflow.db + ./mlruns), wandb")

    @model_validator(mode="before")
    @classmethod
    def _bools_to_str(cls, data):
        if isinstance(data, dict) and isinstance(data.get("bf16"), bool):
            data = {**data, "bf16": str(data["bf16"]).lower()}
        if isinstance(data, dict) and isinstance(data.get("report_to"), str):  # report_to=tensorboard
            data = {**data, "report_to": [] if data["report_to"] == "none" else [data["report_to"]]}
        return data

    @field_validator("report_to")
    @classmethod
    def _trackers_installed(cls, names: list[str]) -> list[str]:
        import importlib.util

        for name in names:  # checked before any work: a missing tracker is found in a second, not after training
            missing = [m for m in TRACKER_MODULES[name] if importlib.util.find_spec(m) is None]
            if missing:
                raise ValueError(f"train.report_to: {name} needs the {', '.join(missing)} package(s): pip install 'tuneforge[track]' "
                                 f"(or drop {name} from train.report_to)")
        return list(dict.fromkeys(names))


class FinetuneTrainConfig(TrainConfig):
    gradient_checkpointing: bool = Field(
        False, description="recompute each block's activations during backward: less memory for about a third more "
        "compute; turns train.share_prefix off (a checkpointed block drops the shared prefix's key/value cache)")


class ProbeSection(Section):
    """Another evaluation scored before and after training, to show what the run cost elsewhere."""

    name: str = Field(description="the probe's name in reports, e.g. chat or uitvsfc")
    task: TaskConfig = Field(default_factory=TaskConfig)
    data: DataSpec = Field(description="the dev split it is scored on (never a hold-out file)")
    limit: int | None = Field(None, ge=1, description="score only the first N rows")


class EvalConfig(Section):
    batch_size: int = Field(16, ge=1, description="prompts per generation batch")
    limit: int | None = Field(None, ge=1, description="score only the first N dev rows")
    max_new_tokens: int | None = Field(None, ge=1, description="default: the task's own budget")
    strategy: Literal["zero_shot", "few_shot", "cot"] = Field("zero_shot", description="prompting strategy")
    shots: int = Field(3, ge=0, description="few_shot: examples drawn (seeded) from the train split")


class ProbedEvalConfig(EvalConfig):
    probes: list[ProbeSection] = Field(default_factory=list, description="other evaluations (any task's dev split, "
                                       "the chat perplexity) scored before and after training, beside the task's own")

    @model_validator(mode="after")
    def _probes_are_named_once(self):
        names = [p.name for p in self.probes]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"eval.probes: the name(s) {twice} appear more than once; each probe is reported by its name")
        return self


class RunConfig(Section):
    name: str = Field("run", description="run folder name under output_dir")
    output_dir: str = Field("runs", description="where run folders go")
    model: str | None = Field(None, description="registry name, local folder or HF hub id; default: the embedded model")
    adapter: str | None = Field(None, description="a LoRA adapter folder to load on top of the model")
    dtype: Literal[DTYPES] = Field("auto", description="weights dtype")
    task: TaskConfig = Field(default_factory=TaskConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("output_dir")
    @classmethod
    def _output_dir_is_a_folder(cls, value: str) -> str:
        """Checked now, not after minutes of loading when the run folder is made."""
        from tuneforge.fileio import nearest_existing

        found = nearest_existing(value)
        if not found.is_dir():
            raise ValueError(f"output_dir {value}: {found} is a file, not a folder; set output_dir to a folder")
        return value


class FinetuneConfig(RunConfig):
    method: Literal["lora", "qlora", "full", "freeze"] = Field(
        "lora", description="what is trained: lora; qlora (the same LoRA on a base loaded in 4-bit NF4 by bitsandbytes: "
        "a CUDA GPU, or a CPU with bitsandbytes >= 0.48); full; freeze")
    lora: LoraConfig = Field(default_factory=LoraConfig)
    freeze: FreezeConfig = Field(default_factory=FreezeConfig)
    train: FinetuneTrainConfig = Field(default_factory=FinetuneTrainConfig)
    eval: ProbedEvalConfig = Field(default_factory=ProbedEvalConfig)
    eval_before: bool = Field(True, description="score the model before training too (the 'before' column)")
    prompting: str | None = Field(None, description="a `tuneforge prompt-eval` run folder on the same task and dev "
                                                   "rows: its strategies appear beside before/after in the report")

    @model_validator(mode="after")
    def _needs_data(self):
        if self.data.train is None:
            raise ValueError("data.train is required for finetune")
        return self


# What a finetune recipe has beyond RunConfig: training settings, which evaluate has no use for.
FINETUNE_ONLY = frozenset(FinetuneConfig.model_fields) - frozenset(RunConfig.model_fields)


class EvaluateConfig(RunConfig):
    """Scores data.dev. A finetune recipe loads as is (`tuneforge evaluate recipes/sst2_lora.yaml adapter=...`):
    its training-only sections (FINETUNE_ONLY) are dropped unread, so evaluate declares only what it uses."""

    @model_validator(mode="before")
    @classmethod
    def _drop_finetune_sections(cls, data):
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in FINETUNE_ONLY}
            if isinstance(data.get("eval"), dict) and "probes" in data["eval"]:  # scored around training only
                data["eval"] = {k: v for k, v in data["eval"].items() if k != "probes"}
        return data

    @model_validator(mode="after")
    def _needs_dev(self):
        if self.data.dev is None:
            raise ValueError("data.dev is required for evaluate")
        return self


# -- loading ------------------------------------------------------------------------------------------


class ConfigLoader(yaml.SafeLoader):
    """Safe YAML with YAML 1.2 numbers. PyYAML follows YAML 1.1, where `2:4` is the base-60 integer 124 (so
    `prune.pattern=2:4` arrived as 124), `1e-4` is a string and `010` is octal 8; here they are '2:4', 0.0001
    and '010'."""


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver(_INT, re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$|^0x[0-9a-fA-F_]+$"), list("-+0123456789"))
ConfigLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?"
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+)$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def load_yaml(text: str):
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - ConfigLoader is a SafeLoader


def parse_overrides(overrides: list[str]) -> dict:
    """['train.lr=1e-4', 'data.train.limit=100'] → nested dict; values parsed as YAML scalars."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' is not key=value (e.g. train.lr=1e-4)")
        key, _, raw = item.partition("=")
        try:
            value = load_yaml(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override '{item}': '{part}' is not a section")
        node[parts[-1]] = value
    return tree


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        # an empty mapping (`files={}`) replaces what the file had rather than adding nothing to it
        out[k] = merge(out[k], v) if isinstance(v, dict) and v and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"config file {path} not found")
    if path.is_dir():  # (a pipe such as <(sed ...) is read like a file)
        raise UserError(f"config file {path} is a folder; pass a recipe file in it, e.g. {path / 'sst2_lora.yaml'}")
    try:
        data = load_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not valid UTF-8 (byte {e.object[e.start]:#04x}); save the file as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from e
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys")
    return data


def load_config(cls: type[BaseModel], path: str | Path | None = None, overrides: list[str] | None = None):
    data = read_yaml(path) if path else {}
    typed = parse_overrides(overrides or [])
    return validate(cls, merge(data, typed), source=str(path) if path else "command line", overrides=typed if path else None)


def validate(cls: type[BaseModel], data: dict, source: str = "config", overrides: dict | None = None):
    """The typed config, or one UserError listing every problem; a problem in a key given on the command
    line (`overrides`) says so, since the file it is reported against does not have it."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        lines = [describe(cls, err) + (" (from the command line)" if _given(overrides, err["loc"]) else "")
                 for err in e.errors()]
        raise UserError(f"{source}: {len(lines)} problem(s):\n" + "\n".join(lines)) from None


def _given(tree: dict | None, loc: tuple) -> bool:
    node = tree
    for part in loc:
        if isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif isinstance(node, dict) and str(part) in node:
            node = node[str(part)]
        else:
            return False
    return bool(loc)


def describe(cls: type[BaseModel], err: dict) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        known = known_keys(cls, err["loc"][:-1])
        close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"
        return f"  {key}: unknown key{hint}"
    if err["type"] == "value_error":
        return f"  {err['msg'].removeprefix('Value error, ')}"
    return f"  {key}: {err['msg']} (got {err.get('input')!r})"


def known_keys(cls: type[BaseModel], loc: tuple) -> list[str]:
    model = cls
    for part in loc:
        if isinstance(part, int):  # an item of a list of sections, e.g. compare's models[0]
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)


def to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def split_config_args(args) -> tuple[str | None, list[str]]:
    """(YAML path, overrides); argparse puts a leading key=value into `config` when no YAML is given."""
    path, overrides = args.config, list(args.overrides)
    if path and "=" in path and not path.endswith((".yaml", ".yml")):
        overrides.insert(0, path)
        path = None
    return path, overrides


def config_from_args(cls, args):
    return load_config(cls, *split_config_args(args))
