"""`tuneforge finetune CONFIG`: LoRA, full or freeze fine-tuning on a task, with the loop in plain sight.

setup() builds everything, fit() is the loop (forward, loss, backward, step), validate() scores the dev
split with the task's own metrics. Runs the same under `torchrun --nproc_per_node N` (accelerate, DDP) and
under `accelerate launch --config_file recipes/accelerate/fsdp_gpu.yaml` (FSDP; README "Scaling out").
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.config import FinetuneConfig, config_from_args
from tuneforge.fileio import write_jsonl
from tuneforge.report.run_report import write_run_report
from tuneforge.runs import complete_run
from tuneforge.scoring import probe_changes, score_probes
from tuneforge.training.loop import announce, fit, headline, scored_once, validate
from tuneforge.training.setup import save_artifact, setup


def finetune(cfg: FinetuneConfig) -> Path:
    s = setup(cfg)
    acc = s.accelerator
    trainable, total = announce(s, cfg.method)
    fresh = acc.is_main_process and not cfg.train.resume
    before = scored_once(s.run_dir / "metrics_before.json", fresh and cfg.eval_before and bool(s.dev_rows),
                         lambda: validate(s, desc="dev before"))
    # probes regardless of eval_before: a probe's number is its change
    probes_before = scored_once(s.run_dir / "probes_before.json", fresh and bool(s.probes), lambda: score_probes(
        s.model, s.tok, s.probes, batch_size=cfg.eval.batch_size, when="before"))
    train = fit(s)
    train.update(trainable_params=trainable, total_params=total, processes=acc.num_processes)
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return s.run_dir
    artifact = save_artifact(s)  # before the last scoring: a Ctrl-C there keeps the trained weights
    after = validate(s, desc="dev after") if s.dev_rows else {}
    if s.dev_rows:
        write_jsonl(s.run_dir / "predictions.jsonl", s.last_predictions)
    probes_after = score_probes(s.model, s.tok, s.probes, batch_size=cfg.eval.batch_size, when="after")
    result = {"task": s.task.name, "method": cfg.method, "model": cfg.model, "primary_metric": s.task.primary_metric,
              "dev_rows": len(s.dev_rows), "before": headline(before), "after": headline(after), "train": train,
              "probes": probe_changes(s.probes, probes_before, probes_after),
              "detail": {"before": before, "after": after, "probes": {"before": probes_before, "after": probes_after}},
              "artifact": str(artifact), "prompting": s.prompting}
    write_run_report(s.run_dir, result, s.history)
    complete_run(s.run_dir, result)
    return s.run_dir


def run(args):
    from tuneforge.training import classifier

    if classifier.wants_classifier(args):  # `head: classifier`: an encoder with a classification head
        cfg = config_from_args(classifier.ClassifierConfig, args)
        run_dir = classifier.finetune_classifier(cfg)
    else:
        cfg = config_from_args(FinetuneConfig, args)
        run_dir = finetune(cfg)
    result = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else None
    if result:
        from tuneforge.report.run_report import print_summary

        print_summary(result, run_dir)
