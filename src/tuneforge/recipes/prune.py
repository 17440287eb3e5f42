"""`tuneforge prune CONFIG`: prune a (fine-tuned) model, optionally recover with a masked LoRA, score it.

    model (+ adapter, merged) ─► score "before" ─► prune ─► score "pruned" ─► [recovery LoRA ─► score "recovered"]
                             ─► save model/ ─► reload it and count zeros per matrix

Methods (prune.method):
- magnitude: drop the smallest |W| per matrix or per output row (prune.scope), or N:M (prune.pattern=2:4)
- wanda: |W| × input-activation norm from calibration rows of the task, per output row, block by block;
  prune.refit=true then re-fits the kept weights by least squares (same mask; on SST-2, -9.5 → -2.6 points)
- blocks: remove whole transformer blocks with the lowest importance (1 − cos(block input, block output))
- existing: the loaded model is already pruned (a run's model/); its zeros are the mask, so its recovery can go on
  (with recovery.distill, recovery.teacher names the unpruned model to learn from)

prune.steps: prune → score → recover → score once per step, each step pruning further (zeros score 0, so the
last step's stay) on calibration rows of the model the last step left; on SST-2, three steps to 50% lose 0.1-0.2
points after recovery where one shot loses 1.2.

Recovery keeps pruned weights at zero: the LoRA delta (or, with recovery.train=weights, the trained weight
itself) is masked in the forward pass (see tuneforge.compress.masked_lora), so the recovered model has
exactly the pruned sparsity. It learns from the gold answers (cross-entropy), or with recovery.distill from
the unpruned model's token distributions too.

Writes runs/<name>/: config.yaml, model/ (HF layout), metrics.json, metrics.jsonl, predictions.jsonl,
sparsity.json (per matrix, measured after reloading model/), report.md/html.
"""

from __future__ import annotations

import copy
import time
from itertools import pairwise
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tuneforge.compress.sections import KDSection
from tuneforge.config import RunConfig, Section, TrainConfig
from tuneforge.errors import UserError
from tuneforge.fileio import write_json, write_jsonl
from tuneforge.runs import complete_run

CALIBRATED = ("wanda", "blocks")  # methods that run calibration rows through the model


class PruneSection(Section):
    method: Literal["magnitude", "wanda", "blocks", "existing"] = Field("wanda", description="what decides which weights go; existing: keep the model's zeros as they are (a model already pruned, e.g. to continue its recovery)")
    sparsity: float = Field(0.5, ge=0, lt=1, description="unstructured: fraction of each block matrix set to zero")
    pattern: str = Field("unstructured", description="unstructured, or N:M semi-structured such as 2:4")
    scope: Literal["matrix", "row"] = Field("row", description="method=magnitude: rank weights in the whole matrix or per output row (wanda is always per row)")
    remove: float = Field(0.25, gt=0, description="method=blocks: fraction of blocks to remove (< 1) or how many (≥ 1)")
    refit: bool = Field(False, description="method=wanda: re-fit each row's kept weights by least squares on the calibration inputs (SparseGPT's update, same mask)")
    calibration_rows: int = Field(128, ge=1, description="training rows run through the model for Wanda norms and block importance")
    calibration_batch_size: int = Field(8, ge=1, description="rows per calibration forward pass")
    steps: int | list[float] = Field(1, description="reach sparsity in this many equal steps (2: 25% then 50%) or through the listed sparsities ([0.25, 0.375, 0.5], ending at sparsity), each calibrated on the model as the last step left it and followed by recovery; step k draws its rows with data.train.seed + k")

    def schedule(self) -> list[float]:
        """The sparsity after each step."""
        if isinstance(self.steps, list):
            return list(self.steps)
        return [self.sparsity * (k + 1) / self.steps for k in range(self.steps)]

    @field_validator("pattern")
    @classmethod
    def _pattern_parses(cls, value: str) -> str:
        from tuneforge.compress.prune import parse_pattern

        try:
            parse_pattern(value)
        except UserError as e:
            raise ValueError(str(e)) from None
        return value

    @model_validator(mode="after")
    def _steps_reach_sparsity(self):
        steps = self.steps
        if isinstance(steps, int) and steps < 1:
            raise ValueError(f"prune.steps must be at least 1, got {steps}")
        if isinstance(steps, list):
            rising = all(a < b for a, b in pairwise([0.0, *steps]))
            if not steps or not rising or abs(steps[-1] - self.sparsity) > 1e-9:
                raise ValueError(f"prune.steps {steps} must rise step by step and end at prune.sparsity ({self.sparsity}), "
                                 f"e.g. [0.25, 0.375, {self.sparsity}]")
        return self


class RecoverySection(Section):
    enabled: bool = Field(False, description="after pruning, train a masked LoRA (or the masked weights, see train) so zeros stay zero")
    train: Literal["lora", "weights"] = Field("lora", description="lora: a masked LoRA (r, alpha); weights: the kept weights of the block linears themselves, masked (about the same compute per step, more capacity, optimizer state for every block weight)")
    r: int = Field(16, ge=1, description="recovery.train=lora: LoRA rank (not used with train: weights)")
    alpha: float = Field(32, gt=0, description="recovery.train=lora: LoRA scale = alpha / r (not used with train: weights)")
    target_modules: str | list[str] = Field("all-linear", description="'all-linear' (every block linear) or names such as [q_proj, v_proj]")
    distill: bool = Field(False, description="train towards the unpruned model's token distributions (KD, settings in recovery.kd) as well as the gold answers; keeps a dense copy in memory")
    kd: KDSection = Field(default_factory=KDSection, description="recovery.distill: the KD loss, as in distill's kd section")
    teacher: str | None = Field(None, description="recovery.distill: the model to learn from; null: the model as loaded, before pruning (needed with prune.method: existing, whose loaded model is already pruned)")
    teacher_adapter: str | None = Field(None, description="recovery.teacher: a LoRA adapter merged into it")


class PruneConfig(RunConfig):
    prune: PruneSection = Field(default_factory=PruneSection)
    recovery: RecoverySection = Field(default_factory=RecoverySection)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(max_steps=100, lr=2e-4), description="the recovery loop")
    eval_before: bool = Field(True, description="score the unpruned model too (the 'before' column)")

    @model_validator(mode="after")
    def _needs_data(self):
        if self.data.dev is None:
            raise ValueError("data.dev is required: the pruned model is scored on it")
        p = self.prune
        stepped = len(p.schedule()) > 1
        if stepped and (p.method not in ("wanda", "magnitude") or p.pattern != "unstructured"):
            raise ValueError(f"prune.steps: {p.steps} needs prune.method wanda or magnitude with pattern unstructured "
                             f"(method is {p.method}, pattern {p.pattern}); set prune.steps: 1")
        if stepped and self.train.resume:
            raise ValueError("train.resume with prune.steps: a run in steps cannot resume (its checkpoint could be any "
                             "step's); drop train.resume and run it again, or set prune.steps: 1")
        if self.prune.refit and self.prune.method != "wanda":
            raise ValueError(f"prune.refit needs prune.method: wanda (it re-fits from the calibration inputs); method is {self.prune.method}")
        r = self.recovery
        if self.prune.method == "existing" and r.enabled and r.distill and not r.teacher:
            raise ValueError("prune.method: existing with recovery.distill needs recovery.teacher (and teacher_adapter): "
                             "the loaded model is already pruned, so it cannot teach its own recovery")
        if r.teacher_adapter and not r.teacher:
            raise ValueError("recovery.teacher_adapter needs recovery.teacher: the model it belongs to")
        needs_train = self.prune.method in CALIBRATED or r.enabled
        if needs_train and self.data.train is None:
            raise ValueError("data.train is required for calibration (wanda, blocks) and recovery: point it at the task's training split")
        return self


def blocks_to_remove(total: int, remove: float) -> int:
    count = round(total * remove) if remove < 1 else int(remove)
    if not 0 < count < total:
        raise UserError(f"prune.remove={remove} removes {count} of {total} blocks; it must remove at least one and keep one")
    return count


def prune_model(model, cfg: PruneConfig, calib: list[dict]) -> tuple[dict | None, dict]:
    """Prune in place. Returns (masks or None for block removal, details for metrics.json)."""
    from tuneforge.compress import blocks as blk
    from tuneforge.compress import prune as pr

    p = cfg.prune
    nm = pr.parse_pattern(p.pattern)
    if p.method == "blocks":
        importance = blk.block_importance(model, calib)
        _, _, blocks = blk.decoder_blocks(model)
        drop = blk.least_important(importance, blocks_to_remove(len(blocks), p.remove))
        blk.remove_blocks(model, drop)
        return None, {"block_importance": importance, "removed_blocks": drop, "blocks_left": len(blocks) - len(drop)}
    if p.method == "existing":
        zero = pr.sparsity_report(model)["prunable_sparsity"]
        print(f"prune.method=existing: {zero:.1%} of the block matrices' weights are zero and stay zero"
              + ("" if zero else " (none: this model is not pruned, so its recovery is a plain fine-tune)"))
        return pr.masks_from_zeros(model), {}
    if p.method == "wanda":
        masks = pr.wanda_prune(model, calib, p.sparsity, nm=nm, refit=p.refit)
    else:
        masks = pr.magnitude_masks(model, p.sparsity, scope=p.scope, nm=nm)
        pr.apply_masks(model, masks)
    return masks, {}


def recovery_teacher(model, tok, cfg: PruneConfig):
    """The model recovery distills from: recovery.teacher, or by default the unpruned model, copied now,
    before pruning changes the weights in place. None without recovery.distill."""
    from tuneforge.compress.kd import check_same_tokenizer
    from tuneforge.models.loading import load_merged

    r = cfg.recovery
    if not (r.enabled and r.distill):
        return None
    if not r.teacher:
        return copy.deepcopy(model).requires_grad_(False)
    teacher, teacher_tok = load_merged(r.teacher, r.teacher_adapter, cfg.dtype)
    check_same_tokenizer(teacher_tok, tok, r.teacher, key="recovery.teacher")
    return teacher.requires_grad_(False)


def recover(model, tok, task, train_rows, masks, cfg: PruneConfig, run_dir: Path, teacher=None,
            resume_command: str | None = None, dev_rows: list[dict] = ()) -> dict:
    """Masked LoRA (or the masked weights themselves) on the block linears, trained with finetune's loop, then
    merged (zeros kept). The loss is finetune's cross-entropy on the answers, or with a `teacher` (the
    unpruned model) distill's KD + CE mix."""
    from tuneforge.compress.distill import DistillLoss
    from tuneforge.compress.masked_lora import (
        add_masked_lora,
        add_masked_weights,
        merge_masked_lora,
        target_linears,
    )
    from tuneforge.compress.prune import prunable_linears
    from tuneforge.training.loop import train
    from tuneforge.training.losses import TargetOnlyLoss
    from tuneforge.training.setup import encode_rows

    linears = target_linears(model, prunable_linears(model), cfg.recovery.target_modules)
    if cfg.recovery.train == "weights":
        add_masked_weights(model, linears, masks)
    else:
        add_masked_lora(model, linears, masks, r=cfg.recovery.r, alpha=cfg.recovery.alpha)
    examples = encode_rows(tok, task, train_rows, cfg.train.max_seq_len)
    share = cfg.train.share_prefix
    loss = DistillLoss(model, teacher, cfg.recovery.kd, share) if teacher is not None else TargetOnlyLoss(model, share)
    stats = train(cfg, task, model, tok, loss, examples, run_dir, dev_rows=dev_rows, resume_command=resume_command)
    merge_masked_lora(model)
    return stats


def step_configs(cfg: PruneConfig) -> list[PruneConfig]:
    """One config per pruning step (prune.schedule()), step k drawing its rows with seed + k."""
    configs = []
    for k, sparsity in enumerate(cfg.prune.schedule()):
        step = cfg.model_copy(deep=True)
        step.prune = step.prune.model_copy(update={"sparsity": sparsity, "steps": 1})  # each step is a one-step prune
        if step.data.train is not None:
            step.data.train.seed += k
        configs.append(step)
    return configs


def prune(cfg: PruneConfig) -> Path:
    from tuneforge.compress.prune import sparsity_report
    from tuneforge.models.loading import load_merged, reload
    from tuneforge.models.saving import save_model
    from tuneforge.scoring import score
    from tuneforge.tasks import get_task
    from tuneforge.tasks.splits import load_rows, load_train_rows
    from tuneforge.training.optim import processes
    from tuneforge.training.setup import checkpoint_to_resume, resolve_run_dir

    checkpoint_to_resume(cfg)  # a missing checkpoint is reported before anything loads
    task = get_task(cfg.task.name, **cfg.task.options())
    configs = step_configs(cfg)
    train_rows, dev_rows = load_rows(cfg, task)  # step 1's rows; bad data fails before runs/<name> exists
    step_rows = [train_rows] + [load_train_rows(c, task) for c in configs[1:]]  # each step's seed
    model, tok = load_merged(cfg.model, cfg.adapter, cfg.dtype)  # a bad model/adapter fails before runs/<name> exists
    if cfg.prune.method == "blocks":  # the count needs the model's depth; checked before any scoring
        blocks_to_remove(model.config.num_hidden_layers, cfg.prune.remove)
    teacher = recovery_teacher(model, tok, cfg)
    # train.resume continues in the interrupted run's folder; under torchrun every process agrees on one folder,
    # prunes alike, recovers on its share of the rows, and the main process alone scores and writes
    procs = processes()
    run_dir = resolve_run_dir(cfg, procs)
    main = procs.is_main_process
    metrics: dict = {"task": task.name, "primary_metric": task.primary_metric, "method": cfg.prune.method}
    if cfg.prune.method != "existing":
        metrics.update(pattern=cfg.prune.pattern, sparsity_target=cfg.prune.sparsity)
    if cfg.eval_before and main:
        metrics["before"], _ = score(model, tok, task, dev_rows, cfg.eval, label="before pruning")
    history: list[dict] = []
    steps = []
    # a resumed run prunes again (the same zeros) and loads the checkpoint; in steps it could be any step's
    resume = "tuneforge prune <config>" if len(configs) == 1 else None
    for k, (step_cfg, rows) in enumerate(zip(configs, step_rows, strict=True)):
        label = f" (step {k + 1}: {step_cfg.prune.sparsity:.1%})" if len(configs) > 1 else ""
        step, predictions = prune_step(model, tok, task, step_cfg, rows, dev_rows, run_dir, teacher, history, label, resume,
                                       main)
        steps.append(step)
    del teacher
    if not main:
        return run_dir
    metrics.update({k: v for k, v in steps[-1].items() if k != "sparsity"},
                   prune_seconds=sum(s["prune_seconds"] for s in steps))
    if len(steps) > 1:
        metrics["steps"] = steps
        write_jsonl(run_dir / "metrics.jsonl", history)  # one loss curve over all steps
    if not cfg.recovery.enabled:  # with recovery, the last step saved the model before scoring it
        save_model(model, tok, run_dir / "model")
    del model
    reloaded = reload(run_dir / "model", cfg.dtype)
    sparsity = sparsity_report(reloaded)  # counted on what was saved, not on what is in memory
    metrics.update({k: v for k, v in sparsity.items() if k != "per_matrix"})
    write_json(run_dir / "sparsity.json", sparsity)
    write_jsonl(run_dir / "predictions.jsonl", predictions)
    write_prune_report(run_dir, metrics, task.primary_metric, history)
    complete_run(run_dir, metrics)
    print(f"pruned model: {run_dir / 'model'}")
    return run_dir


def prune_step(model, tok, task, cfg: PruneConfig, train_rows, dev_rows, run_dir: Path, teacher,
               history: list[dict], label: str = "", resume_command: str | None = None,
               main: bool = True) -> tuple[dict, list[dict]]:
    """Prune `model` in place to cfg.prune.sparsity, score it, recover and score again if asked (scores and the
    saved model/: the `main` process only). Appends the recovery's loss history (steps counted on from the last
    entry). Returns (metrics, predictions)."""
    from tuneforge.compress.calibration import calibration_batches
    from tuneforge.models.saving import save_model
    from tuneforge.scoring import score

    calib = []
    if cfg.prune.method in CALIBRATED:
        calib = calibration_batches(tok, task, train_rows[: cfg.prune.calibration_rows],
                                           max_len=cfg.train.max_seq_len, batch_size=cfg.prune.calibration_batch_size)
    start = time.perf_counter()
    masks, details = prune_model(model, cfg, calib)
    step: dict = {"sparsity": cfg.prune.sparsity, **details, "prune_seconds": time.perf_counter() - start}
    predictions: list[dict] = []
    if main:
        step["pruned"], predictions = score(model, tok, task, dev_rows, cfg.eval, label=f"after pruning{label}")
    if cfg.recovery.enabled:
        stats = recover(model, tok, task, train_rows, masks, cfg, run_dir, teacher, resume_command, dev_rows)
        offset = history[-1]["step"] if history else 0
        history.extend({**row, "step": row["step"] + offset} for row in stats.pop("history"))
        step["recovery"] = stats
        if main:
            save_model(model, tok, run_dir / "model")  # before scoring: a Ctrl-C there keeps the recovered model
            step["recovered"], predictions = score(model, tok, task, dev_rows, cfg.eval, label=f"after recovery{label}")
    return step, predictions


def write_prune_report(run_dir: Path, metrics: dict, primary: str, history: list[dict]) -> None:
    from tuneforge.report import plot_loss, plot_metric_bars, write_report

    stages = {"before": {primary: metrics["before"][primary]}} if "before" in metrics else {}
    steps = [(f" {s['sparsity']:.1%}", s) for s in metrics["steps"]] if "steps" in metrics else [("", metrics)]
    for suffix, step in steps:  # with prune.steps, every step's scores in order
        stages.update({f"{s}{suffix}": {primary: step[s][primary]} for s in ("pruned", "recovered") if s in step})
    images = [("Task metric before and after pruning", plot_metric_bars(stages, run_dir / "metrics.png", title=primary))]
    if history:
        images.append(("Recovery loss", plot_loss(history, run_dir / "loss.png", title="Recovery loss")))
    summary = [(k, metrics[k]) for k in ("method", "pattern", "sparsity_target", "prunable_sparsity",
                                         "overall_sparsity", "nonzero_parameters", "parameters", "removed_blocks")
               if k in metrics]
    rows = [{"stage": s, **v} for s, v in stages.items()]
    write_report(run_dir, title=f"Pruning: {metrics['method']}", summary=summary,
                 tables=[("Task metric", rows)], images=images,
                 notes=["Sparsity is counted on the saved model/ after reloading it (sparsity.json lists every matrix)."])


# -- CLI ------------------------------------------------------------------------------------------------


def run(args) -> int:
    from tuneforge.config import config_from_args

    prune(config_from_args(PruneConfig, args))
    return 0
