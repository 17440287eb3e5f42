"""The one training loop (fit): forward, loss on target tokens, backward, clip, step, log, mid-run dev
scores, checkpoints, Ctrl-C. finetune, the classifier head, distill and prune recovery all run it."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from tuneforge.data.encode import collate
from tuneforge.fileio import write_json
from tuneforge.models.dtypes import use_bf16
from tuneforge.scoring import score_task
from tuneforge.tracking import open_tracking
from tuneforge.training.batching import count_target_tokens
from tuneforge.training.checkpoints import (
    load_checkpoint,
    resume_hint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    sigint_held,
)
from tuneforge.training.optim import count_params, make_accelerator, refuse_sharding, shards_weights
from tuneforge.training.setup import Setup, assemble, checkpoint_to_resume, gather_model, prepare


class Interrupted(Exception):
    """Ctrl-C during training; a checkpoint was written. The CLI exits 130."""


def fit(s: Setup) -> dict:
    """The training loop: forward, loss on target tokens, backward, clip, step, log, evaluate, checkpoint."""
    cfg, acc = s.cfg, s.accelerator
    prepare(s)
    world = acc.num_processes
    start_step = 0
    if cfg.train.resume:
        ckpt = checkpoint_to_resume(cfg)
        start_step, rng = load_checkpoint(ckpt, s.model, s.optimizer, s.scheduler)
        set_rng_state(rng)
        acc.print(f"resumed from {ckpt} at step {start_step}")
    metrics_path = s.run_dir / "metrics.jsonl"
    log = open(metrics_path, "a", encoding="utf-8") if acc.is_main_process else None
    tracking = s.tracking or open_tracking(cfg.train.report_to, s.run_dir, hyperparameters(cfg),
                                           main_process=acc.is_main_process, resumed=bool(start_step))
    pad = s.tok.pad_token_id
    tokens_seen, t_start = 0, time.time()
    on_cuda = next(s.model.parameters()).is_cuda
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()  # what QLoRA saves is GPU memory: report this run's own peak
    step_rng = rng_state()
    bar = tqdm(total=s.total_steps, initial=start_step, desc="training", unit="step", disable=not acc.is_main_process)
    completed = start_step  # optimizer steps taken: what a checkpoint saved now holds
    try:
        for step in range(start_step, s.total_steps):
            window = s.batches[step * cfg.train.grad_accum:(step + 1) * cfg.train.grad_accum]
            micro = [(s.collate or collate)([s.examples[i] for i in b], pad) for b in window]
            n_targets = sum((s.count_targets or count_target_tokens)(m) for m in micro)
            if world > 1:  # the step's targets on every process: each divides its summed loss by the same count
                n_targets = int(acc.reduce(torch.tensor(n_targets, device=acc.device), "sum"))
            loss_total = 0.0
            for k, batch in enumerate(micro):
                batch = {key: v.to(acc.device) for key, v in batch.items()}
                sync = k == len(micro) - 1
                ctx = acc.no_sync(s.loss_module) if not sync else nullcontext()
                with ctx:
                    loss_sum, _ = s.loss_module(**batch)
                    # token-weighted: batch 8 == 8 x batch 1 accumulated == 2 processes x batch 4 (DDP and FSDP
                    # average the processes' gradients, hence x world)
                    loss = loss_sum / max(n_targets, 1) * world
                    acc.backward(loss)
                loss_total += loss.item() / world
                tokens_seen += int(batch["attention_mask"].sum())
                if s.encoder_decoder:  # the decoder's tokens too
                    tokens_seen += int((batch["labels"] != -100).sum())
            if world > 1:  # the step's loss over every process's rows, not this process's share
                loss_total = float(acc.reduce(torch.tensor(loss_total, device=acc.device), "sum"))
            # the prepared module's parameters: accelerate clips FSDP's shards by them. No max_grad_norm: clipping
            # at infinity measures the norm and scales by 1.0
            grad_norm = float(acc.clip_grad_norm_(s.loss_module.parameters(), cfg.train.max_grad_norm or float("inf")))
            with sigint_held(reraise=True):  # an update is applied whole and counted, or not at all
                s.optimizer.step()
                s.scheduler.step()
                s.optimizer.zero_grad(set_to_none=True)
                step_rng = rng_state()
                done = completed = step + 1
            elapsed = time.time() - t_start
            tps = tokens_seen * acc.num_processes / elapsed
            bar.set_postfix(loss=f"{loss_total:.4f}", tok_s=f"{tps:.0f}")
            bar.update(1)
            if done % cfg.train.log_every == 0 or done == s.total_steps:
                row = {"step": done, "loss": loss_total, "lr": s.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                       "tokens": tokens_seen * acc.num_processes, "tokens_per_second": tps, "elapsed": elapsed}
                s.history.append(row)
                if log:
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                if tracking:
                    tracking.log({f"{s.track_prefix}train/{k}": v for k, v in row.items() if k != "step"}, done)
            if (cfg.train.eval_every and done % cfg.train.eval_every == 0 and done < s.total_steps and s.dev_rows
                    and gather_model(s) is not None):  # FSDP: the main process scores, the others wait
                dev = validate(s, desc=f"dev @ step {done}")
                row = {"step": done, **{f"dev_{k}": v for k, v in dev.items() if isinstance(v, float)}}
                s.history.append(row)
                if log:
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                if tracking:
                    tracking.log({f"{s.track_prefix}dev/{k}": v for k, v in dev.items()}, done)
            if cfg.train.save_every and done % cfg.train.save_every == 0 and acc.is_main_process:
                save_checkpoint(s.run_dir / "checkpoints" / f"step-{done}", s.model, s.optimizer, s.scheduler, done, step_rng)
    except KeyboardInterrupt:
        if shards_weights(acc):
            bar.close()
            acc.print(f"\ninterrupted after step {completed}; FSDP / ZeRO-3 runs write no checkpoint", file=sys.stderr)
            raise Interrupted() from None
        with sigint_held():  # a second Ctrl-C waits for the checkpoint
            bar.close()
            if acc.is_main_process:
                print(f"\ninterrupted after step {completed}; saving a checkpoint (a second Ctrl-C waits for it)...",
                      file=sys.stderr, flush=True)
                ckpt = save_checkpoint(s.run_dir / "checkpoints" / f"step-{completed}", s.model, s.optimizer,
                                         s.scheduler, completed, step_rng)
        if acc.is_main_process:
            hint = resume_hint(s.resume_command, ckpt)
            print(f"checkpoint saved to {ckpt}\n"
                  + (f"resume with: {hint}" if hint else "this run cannot resume from it: run the command again"),
                  file=sys.stderr)
        raise Interrupted() from None
    finally:
        if log:
            log.close()
    bar.close()
    gather_model(s)  # FSDP: the trained weights whole on the main process, for its scoring and saving
    seconds = time.time() - t_start
    return {"tokens": tokens_seen * acc.num_processes, "seconds": seconds,
            "tokens_per_second": tokens_seen * acc.num_processes / max(seconds, 1e-9),
            "steps": s.total_steps - start_step,  # this process's; a resumed run says where it started
            **({"distributed": acc.distributed_type.value} if world > 1 else {}),  # MULTI_GPU (DDP), FSDP, ...
            **({"resumed_from_step": start_step} if start_step else {}),
            **({"peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 1e9} if on_cuda else {})}


def hyperparameters(cfg) -> dict:
    """What a tracker records as the run's hyper-parameters: the resolved config (a bare namespace: its train
    and eval sections)."""
    if hasattr(cfg, "model_dump"):
        return cfg.model_dump(mode="json")
    return {k: v.model_dump(mode="json") for k, v in vars(cfg).items() if hasattr(v, "model_dump")}


def validate(s: Setup, desc: str = "dev") -> dict:
    s.model.eval()
    if s.score_dev is not None:  # e.g. a classification head: one forward pass per row, no generation
        metrics, predictions = s.score_dev(s, desc)
    else:
        metrics, predictions = score_task(s.model, s.tok, s.task, s.dev_rows, batch_size=s.cfg.eval.batch_size,
                                          max_new_tokens=s.cfg.eval.max_new_tokens, desc=desc)
    s.model.train()
    s.last_predictions = predictions
    return metrics


def headline(metrics: dict) -> dict:
    """The scalar metrics (for tables and metrics.json's before/after)."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def train(cfg, task, model: nn.Module, tok, loss_module: nn.Module, examples: list[dict], run_dir: Path,
          dev_rows: list[dict] = (), resume_command: str | None = None) -> dict:
    """fit() on an already built `model` (its trainable parameters are those with requires_grad), for the verbs
    that make their own model (distill's student, prune's recovery). On Ctrl-C a checkpoint is saved;
    `resume_command` (e.g. "tuneforge prune <config>") is how the user resumes from it."""
    cuda = torch.cuda.is_available()
    accelerator = make_accelerator(use_bf16(cfg.train.bf16, "cuda" if cuda else "cpu"))
    refuse_sharding(accelerator, "distill and prune")  # they go on with `model` itself, not a gathered copy
    torch.manual_seed(cfg.train.seed)
    model.train()
    setup = assemble(cfg, task, accelerator, model, tok, loss_module, examples, dev_rows, run_dir,
                     resume_command=resume_command)
    trainable, total = count_params(model)
    print(f"training {trainable:,} of {total:,} parameters on {len(examples)} rows, {setup.total_steps} steps"
          + (f" (this process: {len(setup.batches)} batches of {accelerator.num_processes})" if accelerator.num_processes > 1 else ""))
    stats = fit(setup)
    model.eval()
    return {**stats, "trainable_params": trainable, "total_params": total, "history": setup.history}


def scored_once(path: Path, fresh: bool, score: Callable[[], dict]) -> dict:
    """Scores taken as a run starts (before training): computed now when `fresh` and kept in `path`, else read
    back from `path` (a resumed run's model has already trained), else {}."""
    if fresh:
        result = score()
        write_json(path, result)
        return result
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def announce(s: Setup, method: str) -> tuple[int, int]:
    """Print what the run trains and where it writes; returns (trainable, total) parameters."""
    trainable, total = count_params(s.model)
    s.accelerator.print(f"{method}: training {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%) "
                        f"on {len(s.examples)} rows, {s.total_steps} steps; run folder {s.run_dir}")
    return trainable, total
