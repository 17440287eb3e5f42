"""A continual run: one model trained stage after stage through training.loop.fit, the ledger scored after each.

runs/<name>/
  ledger.json                 R[i][j] so far (and, for adapter_per_task and adapter_chain, the merged ledger); written
                              after every stage, so a finished stage and its scores are never redone
  stages/<k>-<stage>/         the stage's metrics.jsonl, checkpoints/ while it trains, adapter/ when done
  metrics.json, report.*      when every stage is done
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from tuneforge.continual import strategies as S
from tuneforge.continual.config import PER_TASK, ContinualConfig
from tuneforge.continual.ledger import Ledger
from tuneforge.errors import UserError
from tuneforge.fileio import atomic_dir, write_json
from tuneforge.scoring import score
from tuneforge.tasks import get_task
from tuneforge.tasks.base import LOWER_IS_BETTER
from tuneforge.tasks.splits import build_probe, load_split
from tuneforge.training.checkpoints import latest_checkpoint


@dataclass
class Column:
    """One column of the ledger: a stage's task (trained) or a probe (only scored)."""

    name: str
    task: object
    dev_rows: list[dict]
    train_rows: list[dict]          # [] for a probe

    @property
    def lower_is_better(self) -> bool:
        return self.task.primary_metric in LOWER_IS_BETTER


def read_columns(cfg: ContinualConfig) -> list[Column]:
    """Every stage's task, train and dev rows, then every probe's dev rows: bad data fails before any loading."""
    columns = []
    for i, stage in enumerate(cfg.stages):
        task = get_task(stage.task.name, **stage.task.options())
        where = f"stages[{i}] ({stage.name})"
        try:
            train = load_split(task, stage.data.train, "train")
            dev = load_split(task, stage.data.dev, "dev")[: cfg.eval.limit]
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        columns.append(Column(stage.name, task, dev, train))
    for i, section in enumerate(cfg.eval.probes):
        probe = build_probe(section, i)
        columns.append(Column(probe.name, probe.task, probe.rows[: cfg.eval.limit], []))
    return columns


def scoring_copy(model, adapter: str | None = None):
    """A plain model with the adapter merged in: an unmerged LoRA costs more than twice the base model's time per
    generated token on CPU. The training model itself is never merged (bf16 merges and unmerges lose bits)."""
    from tuneforge.models.adapters import is_adapter_model

    scorer = copy.deepcopy(model)
    if is_adapter_model(scorer):
        if adapter:
            scorer.set_adapter(adapter)
        scorer = scorer.merge_and_unload()
    return scorer.eval()


def score_columns(model, tok, columns: list[Column], eval_cfg, label: str) -> tuple[dict[str, float], float]:
    """({column: primary metric}, seconds) for a model, every column scored with the same batched scorer."""
    start = time.perf_counter()
    scores = {}
    for col in columns:
        metrics, _ = score(model, tok, col.task, col.dev_rows, eval_cfg, label=f"{col.name} ({label})")
        scores[col.name] = float(metrics[col.task.primary_metric])
    return scores, time.perf_counter() - start


class ContinualRun:
    """The state a continual run carries from stage to stage (the model, the ledger, the anchors)."""

    def __init__(self, cfg: ContinualConfig, run_dir: Path, columns: list[Column], model, tok, accelerator,
                 base_scores: dict[str, float] | None = None):
        self.cfg, self.run_dir, self.columns = cfg, run_dir, columns
        self.base, self.tok, self.accelerator = model, tok, accelerator
        self.strategy = cfg.continual.strategy
        self.stages = columns[: len(cfg.stages)]
        self.model = None
        self.ewc_anchors: list[tuple[dict, dict]] = []
        self.examples = [self.encode(col.task, col.train_rows) for col in self.stages]
        self.state = self.read_state()
        if not self.state["ledgers"]:
            self.start_ledgers(base_scores)

    # -- state on disk ------------------------------------------------------------------------------------------

    def read_state(self) -> dict:
        path = self.run_dir / "ledger.json"
        if path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
            data["ledgers"] = {k: Ledger.from_json(v) for k, v in data["ledgers"].items()}
            return data
        return {"ledgers": {}, "stages": [], "base_seconds": 0.0}

    def write_state(self) -> None:
        data = {**self.state, "ledgers": {k: v.to_json() for k, v in self.state["ledgers"].items()}}
        write_json(self.run_dir / "ledger.json", data)

    def ledger_names(self) -> list[str]:
        return ["routed", "merged"] if self.strategy in PER_TASK else [self.strategy]

    def start_ledgers(self, base_scores: dict[str, float] | None) -> None:
        seconds = 0.0
        if base_scores is None:
            base_scores, seconds = score_columns(self.base, self.tok, self.columns, self.cfg.eval, "base model")
        for name in self.ledger_names():
            book = Ledger([c.name for c in self.columns], len(self.stages),
                          {c.name: c.lower_is_better for c in self.columns})
            book.add_row(base_scores)
            self.state["ledgers"][name] = book
        self.state["base_seconds"] = seconds
        self.write_state()

    @property
    def stages_done(self) -> int:
        return len(self.state["stages"])

    # -- the model ------------------------------------------------------------------------------------------------

    def encode(self, task, rows: list[dict]) -> list[dict]:
        from tuneforge.training.setup import encode_rows

        return encode_rows(self.tok, task, rows, self.cfg.train.max_seq_len)

    def lora_config(self):
        from peft import LoraConfig

        lo = self.cfg.lora
        return LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, target_modules=lo.target_modules,
                          use_rslora=lo.use_rslora, use_dora=lo.use_dora, task_type="CAUSAL_LM")

    def stage_dir(self, k: int) -> Path:
        return self.run_dir / "stages" / f"{k + 1}-{self.stages[k].name}"

    def adapter_name(self, k: int) -> str:
        return self.stages[k].name if self.strategy in PER_TASK else "default"

    def model_for_stage(self, k: int):
        """The peft model ready to train stage k: one adapter carried on, or (PER_TASK) a new adapter beside the
        earlier ones, fresh or (adapter_chain) a copy of the previous stage's. On a resumed run the earlier stages'
        adapters are read back."""
        from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
        from safetensors.torch import load_file

        seed = self.cfg.train.seed
        if self.model is None:
            torch.manual_seed(seed)  # the first adapter's init, the same in a resumed process
            self.model = get_peft_model(self.base, self.lora_config(), adapter_name=self.adapter_name(0))
            done = range(k) if self.strategy in PER_TASK else ([k - 1] if k else [])
            for j in done:
                name = self.adapter_name(j)
                if name not in self.model.peft_config:
                    self.model.add_adapter(name, self.lora_config())
                weights = load_file(str(self.stage_dir(j) / "adapter" / "adapter_model.safetensors"))
                set_peft_model_state_dict(self.model, weights, adapter_name=name)
            if self.strategy == "ewc":
                self.ewc_anchors = [self.read_anchor(j) for j in range(k)]
        name = self.adapter_name(k)
        if name not in self.model.peft_config:
            torch.manual_seed(seed + k)  # a new adapter's init does not depend on what ran before it
            self.model.add_adapter(name, self.lora_config())
            if self.strategy == "adapter_chain" and k:  # starts where the previous stage ended, as sequential does
                previous = get_peft_model_state_dict(self.model, adapter_name=self.adapter_name(k - 1))
                set_peft_model_state_dict(self.model, previous, adapter_name=name)
        self.model.set_adapter(name)  # the stage's adapter is the one trained
        torch.manual_seed(seed + 1000 + k)  # the stage's dropout, the same whether or not the run was resumed
        return self.model

    # -- one stage ------------------------------------------------------------------------------------------------

    def stage_examples(self, k: int) -> tuple[list[dict], dict]:
        """The stage's own examples, plus replayed earlier rows for replay and self_distill (marked `replay`)."""
        own = [dict(e) for e in self.examples[k]]
        info = {"rows": len(own), "replayed_rows": 0, "replayed_tokens": 0}
        if self.strategy not in ("replay", "self_distill") or k == 0:
            return own, info
        r = self.cfg.continual.replay
        picked = S.replay_rows([c.train_rows for c in self.stages[:k]], len(own), r.ratio, r.seed + k)
        replayed = []
        for j, row in picked:
            example = self.encode(self.stages[j].task, [row])[0]
            replayed.append({**example, "replay": True})
        info["replayed_rows"] = len(replayed)
        info["replayed_tokens"] = sum(len(e["input_ids"]) for e in replayed)
        return own + replayed, info

    def loss_for_stage(self, k: int, model):
        from tuneforge.training.losses import TargetOnlyLoss

        share = self.cfg.train.share_prefix
        own = TargetOnlyLoss(model, share)
        c = self.cfg.continual
        if k == 0:
            return own, None
        if self.strategy == "l2":
            anchor = S.snapshot(model)  # where the previous stage left the weights
            return S.PenalisedLoss(own, model, lambda m: S.l2_penalty(m, anchor), c.l2.weight), None
        if self.strategy == "ewc":
            anchors = list(self.ewc_anchors)
            return S.PenalisedLoss(own, model, lambda m: S.ewc_penalty(m, anchors), c.ewc.weight), None
        if self.strategy == "self_distill":
            from tuneforge.compress.distill import DistillLoss
            from tuneforge.data.encode import collate

            teacher = scoring_copy(model).requires_grad_(False)  # the model as the previous stage left it
            replay = DistillLoss(model.get_base_model(), teacher, c.self_distill, share)
            return S.ReplayDistillLoss(own, replay), S.collate_with_replay(collate)
        return own, None

    def train_stage(self, k: int, resume: Path | None) -> dict:
        from tuneforge.training.loop import fit
        from tuneforge.training.setup import assemble

        model = self.model_for_stage(k)
        examples, info = self.stage_examples(k)
        loss, collate = self.loss_for_stage(k, model)
        folder = self.stage_dir(k)
        folder.mkdir(parents=True, exist_ok=True)
        train = self.cfg.train.model_copy(update={"resume": str(resume) if resume else None})
        stage_cfg = SimpleNamespace(train=train, eval=self.cfg.eval, name=folder.name, output_dir=str(folder.parent))
        col = self.stages[k]
        print(f"stage {k + 1}/{len(self.stages)}: {col.name} ({col.task.name}), {info['rows']} rows"
              + (f" + {info['replayed_rows']} replayed" if info["replayed_rows"] else "")
              + (f", resuming from {resume}" if resume else ""))
        setup = assemble(stage_cfg, col.task, self.accelerator, model, self.tok, loss, examples, col.dev_rows, folder,
                         resume_command="tuneforge continual <config>", collate=collate, tracking=self.tracking,
                         track_prefix=f"{folder.name}/")
        stats = fit(setup)
        model.eval()
        self.save_adapter(k)
        if self.strategy == "ewc":
            self.save_anchor(k)
        return {**{key: v for key, v in stats.items() if not isinstance(v, list)}, **info}

    def save_adapter(self, k: int) -> Path:
        """stages/<k>/adapter: the stage's adapter in PEFT's layout (servable with `tuneforge serve --adapter`)."""
        name = self.adapter_name(k)
        with tempfile.TemporaryDirectory() as scratch, atomic_dir(self.stage_dir(k) / "adapter") as tmp:
            self.model.save_pretrained(scratch, selected_adapters=[name])
            saved = Path(scratch) / name if (Path(scratch) / name).is_dir() else Path(scratch)
            for item in saved.iterdir():
                if item.is_file():
                    shutil.copy2(item, tmp / item.name)
        return self.stage_dir(k) / "adapter"

    def save_anchor(self, k: int) -> None:
        from safetensors.torch import save_file

        from tuneforge.data.encode import collate
        from tuneforge.training.losses import TargetOnlyLoss

        rows = self.examples[k][: self.cfg.continual.ewc.rows]
        batches = [collate([e], self.tok.pad_token_id) for e in rows]
        fisher = S.diagonal_fisher(self.model, TargetOnlyLoss(self.model, False), batches)
        theta = S.snapshot(self.model)
        self.ewc_anchors.append((fisher, theta))
        tensors = {f"fisher.{n}": t.contiguous() for n, t in fisher.items()}
        tensors |= {f"theta.{n}": t.float().contiguous() for n, t in theta.items()}
        save_file(tensors, str(self.stage_dir(k) / "ewc_anchor.safetensors"))

    def read_anchor(self, k: int) -> tuple[dict, dict]:
        from safetensors.torch import load_file

        data = load_file(str(self.stage_dir(k) / "ewc_anchor.safetensors"))
        fisher = {n.removeprefix("fisher."): t for n, t in data.items() if n.startswith("fisher.")}
        theta = {n.removeprefix("theta."): t for n, t in data.items() if n.startswith("theta.")}
        return fisher, theta

    # -- scoring a row --------------------------------------------------------------------------------------------

    def score_stage(self, k: int) -> dict[str, float]:
        """Row k+1 of every ledger; returns the scoring seconds per ledger."""
        ledgers, seconds = self.state["ledgers"], {}
        label = f"after {self.stages[k].name}"
        if self.strategy not in PER_TASK:
            scores, seconds[self.strategy] = score_columns(scoring_copy(self.model), self.tok, self.columns,
                                                           self.cfg.eval, label)
            ledgers[self.strategy].add_row(scores)
            return seconds
        # routed: each trained task answered by its own adapter (frozen since its stage: its score stands), the
        # rest (later stages, probes) by the base model, as `tuneforge serve --adapter` routes requests
        routed = ledgers["routed"]
        own, seconds["routed"] = score_columns(scoring_copy(self.model, self.adapter_name(k)), self.tok,
                                               [self.stages[k]], self.cfg.eval, label)
        row = {c.name: routed.rows[0][j] for j, c in enumerate(self.columns)}
        row |= {c.name: routed.rows[j + 1][j] for j, c in enumerate(self.stages[:k])}
        routed.add_row(row | own)
        merged = self.merged_model(k)
        ledgers["merged"].add_row(self.timed(merged, label, seconds))
        return seconds

    def timed(self, model, label: str, seconds: dict) -> dict[str, float]:
        scores, seconds["merged"] = score_columns(model, self.tok, self.columns, self.cfg.eval, f"merged, {label}")
        return scores

    def merged_model(self, k: int):
        """The adapters of stages 0..k merged into one by peft (linear, TIES or DARE-TIES), merged into the base."""
        m = self.cfg.continual.merge
        names = [self.adapter_name(j) for j in range(k + 1)]
        weights = (m.weights or [1.0] * len(self.stages))[: k + 1]
        scorer = copy.deepcopy(self.model)
        torch.manual_seed(self.cfg.train.seed)  # DARE drops entries at random
        density = None if m.method == "linear" else m.density
        scorer.add_weighted_adapter(names, weights, "merged", combination_type=m.method, density=density)
        return scoring_copy(scorer, "merged")

    # -- the whole run --------------------------------------------------------------------------------------------

    def run(self, resume: Path | None = None) -> dict:
        from tuneforge.tracking import open_tracking

        name = self.cfg.name if self.run_dir.name == self.cfg.name else f"{self.cfg.name}/{self.run_dir.name}"
        self.tracking = open_tracking(self.cfg.train.report_to, self.run_dir, self.cfg.model_dump(mode="json"),
                                      main_process=self.accelerator.is_main_process,
                                      resumed=bool(resume or self.stages_done), name=name)
        for k in range(len(self.stages)):
            if k < self.stages_done:
                continue
            here = self.stage_dir(k).resolve()
            ckpt = resume if resume and here in resume.resolve().parents else latest_checkpoint(self.stage_dir(k))
            stats = self.train_stage(k, ckpt)
            stats["scoring_seconds"] = self.score_stage(k)
            if self.tracking:  # the ledger's new row: every task's score after this stage
                for ledger, book in self.state["ledgers"].items():
                    self.tracking.log({f"ledger/{ledger}/{t}": v for t, v in zip(book.tasks, book.rows[-1], strict=True)},
                                      k + 1)
            self.state["stages"].append({"stage": self.stages[k].name, **stats})
            self.write_state()
        return self.state
