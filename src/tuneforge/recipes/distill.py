"""`tuneforge distill CONFIG`: train a smaller student to imitate a (fine-tuned) teacher on the task.

    teacher (+ adapter, merged) ─► student (teacher blocks subset, or another model with the same tokenizer)
        ─► score student "before" ─► [teacher generates answers: sequence-level KD]
        ─► train on ratio·KD(teacher ‖ student) + (1 − ratio)·CE ─► score "after" ─► save model/ ─► speed vs teacher

The KD loss (tuneforge.compress.kd) is taken on the answer tokens (kd.tokens=targets), on each row's own
text after the prompt prefix all rows share (text), or on every token (all), from hidden states chunk by
chunk, so full-vocabulary logits of a batch never sit in memory at once.

Writes runs/<name>/: config.yaml, model/ (HF layout), metrics.json, metrics.jsonl, predictions.jsonl,
report.md/html.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tuneforge.compress.sections import KDSection, SpeedSection
from tuneforge.config import RunConfig, Section, TrainConfig
from tuneforge.fileio import write_jsonl
from tuneforge.runs import complete_run


class StudentSection(Section):
    model: str | None = Field(None, description="another model sharing the teacher's tokenizer; null: build from the teacher's blocks")
    keep_blocks: str | list[int] = Field("every_other", description="student from teacher: every_other, evenly:K, first:K, importance:K (the K blocks that change the hidden state most on calibration rows) or a list of block indices")
    calibration_rows: int = Field(128, ge=1, description="importance:K: training rows the block importance is measured on")
    trainable: Literal["blocks", "all"] = Field("blocks", description="blocks: train the blocks and final norm, keep embeddings/head frozen; all: everything")

    @field_validator("keep_blocks")
    @classmethod
    def _no_block_twice(cls, value):
        if isinstance(value, list) and len(set(value)) != len(value):
            twice = sorted({i for i in value if value.count(i) > 1})
            raise ValueError(f"student.keep_blocks lists block(s) {twice} more than once; list each block to keep once")
        return value


class DistillConfig(RunConfig):
    student: StudentSection = Field(default_factory=StudentSection)
    kd: KDSection = Field(default_factory=KDSection)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(lr=1e-4), description="the student's training loop")
    speed: SpeedSection = Field(default_factory=SpeedSection)
    eval_before: bool = Field(True, description="score the untrained student too")
    eval_teacher: bool = Field(True, description="score the teacher on the same rows (the reference column)")

    @model_validator(mode="after")
    def _needs_data(self):
        if self.data.train is None or self.data.dev is None:
            raise ValueError("data.train and data.dev are both required for distill")
        return self


def build_student(teacher, teacher_tok, cfg: DistillConfig, task, train_rows: list[dict]):
    from tuneforge.compress.kd import check_same_tokenizer, needs_importance, student_from_teacher
    from tuneforge.models import load_model

    if cfg.student.model:
        student, tok = load_model(cfg.student.model, dtype=cfg.dtype)
        check_same_tokenizer(teacher_tok, tok, cfg.student.model)
        return student, {"student_model": cfg.student.model}
    origin: dict = {}
    if needs_importance(cfg.student.keep_blocks):
        from tuneforge.compress.blocks import block_importance
        from tuneforge.compress.calibration import calibration_batches

        calib = calibration_batches(teacher_tok, task, train_rows[: cfg.student.calibration_rows],
                                    max_len=cfg.train.max_seq_len, batch_size=8)
        origin["block_importance"] = block_importance(teacher, calib)
    student, kept = student_from_teacher(teacher, cfg.student.keep_blocks, origin.get("block_importance"))
    return student, {"kept_blocks": kept, **origin}


def set_trainable(student, which: str) -> None:
    """blocks: everything but the (tied) embeddings and LM head trains; all: everything."""
    student.requires_grad_(True)
    if which == "blocks":
        student.get_input_embeddings().requires_grad_(False)
        student.get_output_embeddings().requires_grad_(False)


def distill(cfg: DistillConfig) -> Path:
    from tuneforge.compress.distill import DistillLoss
    from tuneforge.compress.measure import count_parameters, hf_speed, speed_prompt_ids
    from tuneforge.models.loading import load_merged
    from tuneforge.models.saving import save_model
    from tuneforge.scoring import score
    from tuneforge.tasks import get_task
    from tuneforge.tasks.splits import load_rows
    from tuneforge.training.loop import train
    from tuneforge.training.optim import processes
    from tuneforge.training.setup import as_float32, checkpoint_to_resume, encode_rows, resolve_run_dir

    checkpoint_to_resume(cfg)  # a missing checkpoint is reported before anything loads
    task = get_task(cfg.task.name, **cfg.task.options())
    train_rows, dev_rows = load_rows(cfg, task)
    teacher, tok = load_merged(cfg.model, cfg.adapter, cfg.dtype)  # a bad model/adapter fails before runs/<name> exists
    teacher.requires_grad_(False)
    student, origin = build_student(teacher, tok, cfg, task, train_rows)  # a bad student fails before runs/<name> too
    # train.resume continues in the interrupted run's folder; under torchrun every process agrees on one folder,
    # trains on its share of the rows, and the main process alone scores and writes
    procs = processes()
    run_dir = resolve_run_dir(cfg, procs)
    main = procs.is_main_process
    metrics: dict = {"task": task.name, "primary_metric": task.primary_metric, "kd": cfg.kd.model_dump(), **origin}
    if cfg.eval_teacher and main:
        metrics["teacher"], _ = score(teacher, tok, task, dev_rows, cfg.eval, label="teacher")
    if cfg.eval_before and main:
        metrics["before"], _ = score(student, tok, task, dev_rows, cfg.eval, label="student before")

    answers = None
    if cfg.kd.sequence_level:
        from tuneforge.generation import generate

        answers = generate(teacher, tok, [task.prompt(r) for r in train_rows], max_new_tokens=task.max_new_tokens,
                           batch_size=cfg.kd.generate_batch_size, desc="teacher answers")
    examples = encode_rows(tok, task, train_rows, cfg.train.max_seq_len, answers=answers)
    dtype = next(student.parameters()).dtype
    as_float32(student)  # fp32 master weights; the loop runs under bf16 autocast where supported
    set_trainable(student, cfg.student.trainable)
    stats = train(cfg, task, student, tok, DistillLoss(student, teacher, cfg.kd, cfg.train.share_prefix), examples, run_dir,
                  dev_rows=dev_rows, resume_command="tuneforge distill <config>")
    if not main:
        return run_dir
    history = stats.pop("history")
    metrics["train"] = stats
    student.to(dtype)
    save_model(student, tok, run_dir / "model")  # before the last scoring: a Ctrl-C there keeps the student
    metrics["after"], predictions = score(student, tok, task, dev_rows, cfg.eval, label="student after")

    prompt = speed_prompt_ids(tok, cfg.speed.prompt_tokens)
    for name, net in (("teacher", teacher), ("student", student)):
        total, nonzero = count_parameters(net)
        metrics[f"{name}_speed"] = {**hf_speed(net, prompt, cfg.speed.new_tokens, cfg.speed.repeats),
                                    "parameters": total, "nonzero_parameters": nonzero}
    metrics["decode_speedup"] = metrics["student_speed"]["decode_tok_s"] / metrics["teacher_speed"]["decode_tok_s"]
    write_jsonl(run_dir / "predictions.jsonl", predictions)
    write_distill_report(run_dir, metrics, task.primary_metric, history)
    complete_run(run_dir, metrics)
    print(f"student: {run_dir / 'model'} (decode {metrics['decode_speedup']:.2f}× the teacher's)")
    return run_dir


def write_distill_report(run_dir: Path, metrics: dict, primary: str, history: list[dict]) -> None:
    from tuneforge.report import plot_loss, plot_metric_bars, write_report

    arms = {k: {primary: metrics[k][primary]} for k in ("teacher", "before", "after") if k in metrics}
    images = [("Task metric", plot_metric_bars(arms, run_dir / "metrics.png", title=primary))]
    if history:
        images.append(("Distillation loss", plot_loss(history, run_dir / "loss.png", title="Distillation loss")))
    speed = [{"model": k, **metrics[f"{k}_speed"]} for k in ("teacher", "student")]
    write_report(run_dir, title="Distillation", summary=[("decode speed-up", metrics["decode_speedup"])],
                 tables=[("Task metric", [{"model": k, **v} for k, v in arms.items()]), ("Speed (this machine)", speed)],
                 images=images)


# -- CLI ------------------------------------------------------------------------------------------------


def run(args) -> int:
    from tuneforge.config import config_from_args

    distill(config_from_args(DistillConfig, args))
    return 0
