"""`tuneforge finetune CONFIG`: LoRA, full or freeze fine-tuning on a task, with the loop in plain sight.

setup() builds everything, fit() is the loop (forward, loss, backward, step), validate() scores the dev
split with the task's own metrics. Runs the same under `torchrun --nproc_per_node N` (accelerate, DDP).
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from tuneforge.config import FinetuneConfig
from tuneforge.data import seq2seq as S2S
from tuneforge.errors import UserError
from tuneforge.fileio import atomic_dir, write_json, write_jsonl
from tuneforge.recipes import training as T
from tuneforge.recipes.common import (
    add_config_arguments,
    build_task,
    config_from_args,
    load_split,
    truncate_sources,
)
from tuneforge.recipes.evaluate import score_task
from tuneforge.recipes.run_report import read_prompting, write_run_report


class Interrupted(Exception):
    """Ctrl-C during training; a checkpoint was written. The CLI exits 130."""


@dataclass
class Setup:
    cfg: FinetuneConfig
    task: object
    accelerator: object
    model: torch.nn.Module          # the (peft-wrapped) causal or encoder-decoder LM
    tok: object
    loss_module: torch.nn.Module    # what accelerate prepared (DDP-wrapped when distributed)
    optimizer: object
    scheduler: object
    examples: list[dict]
    batches: list[list[int]]        # this process's micro-batches, in order
    dev_rows: list[dict]
    run_dir: Path
    total_steps: int
    history: list[dict] = field(default_factory=list)
    prompting: list[dict] = field(default_factory=list)  # strategies of cfg.prompting, for the report
    resume_command: str | None = "tuneforge finetune <config>"  # shown on Ctrl-C; None: this run cannot resume
    encoder_decoder: bool = False   # T5, BART, Marian: batches are (source, target) pairs, see data/seq2seq.py


def use_bf16(setting: str, device: str) -> bool:
    from tuneforge.models.loading import cpu_has_bf16

    if setting != "auto":
        return setting == "true"
    return torch.cuda.is_bf16_supported() if device.startswith("cuda") else cpu_has_bf16()


def apply_method(model, cfg: FinetuneConfig):
    if cfg.method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        task_type = "SEQ_2_SEQ_LM" if S2S.is_encoder_decoder(model) else "CAUSAL_LM"
        lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=cfg.lora.target_modules, use_rslora=cfg.lora.use_rslora,
                          use_dora=cfg.lora.use_dora, task_type=task_type)
        try:
            return get_peft_model(model, lora)
        except ValueError as e:
            raise UserError(f"lora.target_modules: {e} This model's linear layers: {linear_names(model)} "
                            "(or use all-linear)") from e
    if cfg.method == "freeze":
        decoder = model.get_decoder()
        blocks = decoder.layers if hasattr(decoder, "layers") else decoder.block  # T5 names its blocks `block`
        n = cfg.freeze.trainable_blocks
        if n > len(blocks):
            what = "decoder blocks" if S2S.is_encoder_decoder(model) else "blocks"
            raise UserError(f"freeze.trainable_blocks={n} but the model has only {len(blocks)} {what}")
        model.requires_grad_(False)
        for block in list(blocks)[len(blocks) - n:]:
            block.requires_grad_(True)
        final_norm = next((getattr(decoder, attr) for attr in ("norm", "final_layer_norm", "layer_norm")
                           if getattr(decoder, attr, None) is not None), None)  # BART and Marian have none
        if final_norm is not None:
            final_norm.requires_grad_(True)
        model.get_output_embeddings().requires_grad_(True)  # tied models train the embeddings with it
    return model


def linear_names(model) -> str:
    """The distinct leaf names of the model's linear layers, e.g. 'k, o, q, v, wi, wo' for T5."""
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    head = model.get_output_embeddings()
    names -= {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if m is head}
    return ", ".join(sorted(names))


def setup(cfg: FinetuneConfig) -> Setup:
    from accelerate.utils import set_seed

    from tuneforge.models import load_model
    from tuneforge.models.loading import model_kind

    quantization = "bnb_nf4" if cfg.method == "qlora" else None
    if quantization:
        from tuneforge.quant.bnb import require_bnb

        require_bnb(quantization, what="method qlora", instead="method=lora")  # before minutes of reading data
    checkpoint_to_resume(cfg)  # before minutes of reading and loading
    task = build_task(cfg)
    kind = model_kind(cfg.model)  # encoder-decoder (T5, BART, Marian) or decoder-only, from config.json
    if kind == "seq2seq":
        S2S.check_task(task)
    train_rows = load_split(task, cfg.data.train, "train")
    dev_rows = load_split(task, cfg.data.dev, "dev")[: cfg.eval.limit] if cfg.data.dev else []
    prompting = read_prompting(cfg.prompting, task.name, len(dev_rows)) if cfg.prompting else []
    cuda = torch.cuda.is_available()
    bf16 = use_bf16(cfg.train.bf16, "cuda" if cuda else "cpu")
    accelerator = T.make_accelerator(bf16)
    set_seed(cfg.train.seed)
    # LoRA keeps the frozen base in bf16 where it is fast; full/freeze keep fp32 master weights under autocast.
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if bf16 and cfg.method in ("lora", "qlora") else "float32")
    model, tok = load_model(cfg.model, dtype=dtype, adapter=None, device=str(accelerator.device), quantization=quantization,
                            kind=kind)
    encoder_decoder = kind == "seq2seq"
    if quantization:
        from peft import prepare_model_for_kbit_training

        from tuneforge.quant.bnb import keep_nf4_layers_trainable

        keep_nf4_layers_trainable(model)
        # peft's k-bit preparation: the unquantized parameters (embeddings, norms) in fp32; checkpointing is
        # train.gradient_checkpointing's to choose
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if cfg.train.gradient_checkpointing:
        # non-reentrant: gradients reach LoRA inside a block without the inputs themselves requiring grad
        try:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        except ValueError as e:  # an architecture without checkpointing support
            raise UserError(f"train.gradient_checkpointing: {e}; set it to false for this model") from e
    if cfg.adapter:  # continue training an existing adapter
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, cfg.adapter, is_trainable=True)
    else:
        model = apply_method(model, cfg)
    model.train()
    train_rows = truncate_sources(task, train_rows, tok, "train")
    dev_rows = truncate_sources(task, dev_rows, tok, "dev")

    encode = S2S.encode_row if encoder_decoder else encode_row
    examples = [encode(tok, task, row, cfg.train.max_seq_len) for row in tqdm(train_rows, desc="tokenizing", leave=False)]
    truncated = sum(e["truncated"] for e in examples)
    if truncated:
        print(f"note: {truncated} of {len(examples)} training examples were longer than train.max_seq_len="
              f"{cfg.train.max_seq_len} and were cut on the source side")
    cut_targets = sum(e.get("target_truncated", False) for e in examples)
    if cut_targets:
        print(f"note: {cut_targets} of {len(examples)} training targets were longer than train.max_seq_len="
              f"{cfg.train.max_seq_len} tokens and lost their end")
    if not any(any(label != -100 for label in e["labels"]) for e in examples):
        raise UserError("no training example has a target token: check data.train columns and task settings")
    batches = T.group_batches([len(e["input_ids"]) for e in examples], cfg.train.batch_size, cfg.train.seed, cfg.train.epochs,
                              cfg.train.group_by_length)
    world, rank = accelerator.num_processes, accelerator.process_index
    usable = len(batches) - len(batches) % (world * cfg.train.grad_accum) or len(batches)
    batches = batches[:usable][rank::world]
    total_steps = max(1, len(batches) // cfg.train.grad_accum)
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)

    share_prefix = cfg.train.share_prefix and not cfg.train.gradient_checkpointing and not encoder_decoder
    if encoder_decoder:
        if cfg.train.share_prefix and "share_prefix" in cfg.train.model_fields_set:
            accelerator.print("note: train.share_prefix is off for an encoder-decoder model (its decoder does not "
                              "read the prompt as a prefix)")
        loss_module = S2S.Seq2SeqLoss(model)
    else:
        if cfg.train.share_prefix and not share_prefix:
            accelerator.print("note: train.gradient_checkpointing turns train.share_prefix off (each row runs its whole prompt)")
        loss_module = T.TargetOnlyLoss(model, share_prefix)
    optimizer = T.make_optimizer(model, cfg.train)
    scheduler = T.make_scheduler(optimizer, cfg.train, total_steps)
    loss_module, optimizer = accelerator.prepare(loss_module, optimizer)
    run_dir = resolve_run_dir(cfg, accelerator)
    return Setup(cfg, task, accelerator, model, tok, loss_module, optimizer, scheduler, examples, batches,
                 dev_rows, run_dir, total_steps, prompting=prompting, encoder_decoder=encoder_decoder)


def encode_row(tok, task, row, max_len):
    from tuneforge.data.encode import encode_conversation

    return encode_conversation(tok, task.conversation(row), max_len)


def checkpoint_to_resume(cfg: FinetuneConfig) -> Path | None:
    """train.resume's checkpoint (latest: the newest in runs/<name>/checkpoints); None when not resuming."""
    from tuneforge.runs import resumed_run_dir

    resume = cfg.train.resume
    if not resume:
        return None
    run = resumed_run_dir(cfg)
    ckpt = T.latest_checkpoint(run) if resume == "latest" else Path(resume)
    if ckpt is None or not (ckpt / "step.json").exists():
        raise UserError(f"train.resume: no checkpoint found at {ckpt or run / 'checkpoints'}; "
                        "pass a checkpoints/step-N folder of an interrupted run, or drop train.resume")
    return ckpt


def resolve_run_dir(cfg: FinetuneConfig, accelerator) -> Path:
    from tuneforge.runs import resumed_run_dir, run_dir_for

    resume = cfg.train.resume
    path = run_dir_for(cfg) if accelerator.is_main_process else resumed_run_dir(cfg)
    accelerator.wait_for_everyone()
    if accelerator.num_processes > 1 and not resume:
        # every rank must agree on the folder the main process picked
        import torch.distributed as dist

        box = [str(path)]
        dist.broadcast_object_list(box, src=0)
        path = Path(box[0])
    return path


def fit(s: Setup) -> dict:
    """The training loop: forward, loss on target tokens, backward, clip, step, log, evaluate, checkpoint."""
    cfg, acc = s.cfg, s.accelerator
    start_step = 0
    if cfg.train.resume:
        ckpt = checkpoint_to_resume(cfg)
        start_step, rng = T.load_checkpoint(ckpt, s.model, s.optimizer, s.scheduler)
        T.set_rng_state(rng)
        acc.print(f"resumed from {ckpt} at step {start_step}")
    metrics_path = s.run_dir / "metrics.jsonl"
    log = open(metrics_path, "a", encoding="utf-8") if acc.is_main_process else None
    pad = s.tok.pad_token_id
    # a causal LM's first token has no position predicting it; an encoder-decoder's labels are all predicted
    collate, first_target = (S2S.collate_seq2seq, 0) if s.encoder_decoder else (T.collate, 1)
    tokens_seen, t_start = 0, time.time()
    on_cuda = next(s.model.parameters()).is_cuda
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()  # what QLoRA saves is GPU memory: report this run's own peak
    step_rng = T.rng_state()
    bar = tqdm(total=s.total_steps, initial=start_step, desc="training", unit="step", disable=not acc.is_main_process)
    completed = start_step  # optimizer steps taken: what a checkpoint saved now holds
    try:
        for step in range(start_step, s.total_steps):
            window = s.batches[step * cfg.train.grad_accum:(step + 1) * cfg.train.grad_accum]
            micro = [collate([s.examples[i] for i in b], pad) for b in window]
            n_targets = sum(int((m["labels"][:, first_target:] != -100).sum()) for m in micro)
            loss_total = 0.0
            for k, batch in enumerate(micro):
                batch = {key: v.to(acc.device) for key, v in batch.items()}
                sync = k == len(micro) - 1
                ctx = acc.no_sync(s.loss_module) if not sync else nullcontext()
                with ctx:
                    loss_sum, _ = s.loss_module(**batch)
                    loss = loss_sum / max(n_targets, 1)  # token-weighted: batch 8 == 8 x batch 1 accumulated
                    acc.backward(loss)
                loss_total += loss.item()
                tokens_seen += int(batch["attention_mask"].sum())
                if s.encoder_decoder:  # the decoder's tokens too
                    tokens_seen += int((batch["labels"] != -100).sum())
            if cfg.train.max_grad_norm:
                acc.clip_grad_norm_(s.model.parameters(), cfg.train.max_grad_norm)
            with T.sigint_held(reraise=True):  # an update is applied whole and counted, or not at all
                s.optimizer.step()
                s.scheduler.step()
                s.optimizer.zero_grad(set_to_none=True)
                step_rng = T.rng_state()
                done = completed = step + 1
            elapsed = time.time() - t_start
            tps = tokens_seen * acc.num_processes / elapsed
            bar.set_postfix(loss=f"{loss_total:.4f}", tok_s=f"{tps:.0f}")
            bar.update(1)
            if done % cfg.train.log_every == 0 or done == s.total_steps:
                row = {"step": done, "loss": loss_total, "lr": s.scheduler.get_last_lr()[0],
                       "tokens": tokens_seen * acc.num_processes, "tokens_per_second": tps, "elapsed": elapsed}
                s.history.append(row)
                if log:
                    log.write(json.dumps(row) + "\n")
                    log.flush()
            if cfg.train.eval_every and done % cfg.train.eval_every == 0 and done < s.total_steps and s.dev_rows:
                dev = validate(s, desc=f"dev @ step {done}")
                row = {"step": done, **{f"dev_{k}": v for k, v in dev.items() if isinstance(v, float)}}
                s.history.append(row)
                if log:
                    log.write(json.dumps(row) + "\n")
                    log.flush()
            if cfg.train.save_every and done % cfg.train.save_every == 0 and acc.is_main_process:
                T.save_checkpoint(s.run_dir / "checkpoints" / f"step-{done}", s.model, s.optimizer, s.scheduler, done, step_rng)
    except KeyboardInterrupt:
        with T.sigint_held():  # a second Ctrl-C waits for the checkpoint
            bar.close()
            if acc.is_main_process:
                print(f"\ninterrupted after step {completed}; saving a checkpoint (a second Ctrl-C waits for it)...",
                      file=sys.stderr, flush=True)
                ckpt = T.save_checkpoint(s.run_dir / "checkpoints" / f"step-{completed}", s.model, s.optimizer,
                                         s.scheduler, completed, step_rng)
        if acc.is_main_process:
            hint = T.resume_hint(s.resume_command, ckpt)
            print(f"checkpoint saved to {ckpt}\n"
                  + (f"resume with: {hint}" if hint else "this run cannot resume from it: run the command again"),
                  file=sys.stderr)
        raise Interrupted() from None
    finally:
        if log:
            log.close()
    bar.close()
    seconds = time.time() - t_start
    return {"tokens": tokens_seen * acc.num_processes, "seconds": seconds,
            "tokens_per_second": tokens_seen * acc.num_processes / max(seconds, 1e-9),
            "steps": s.total_steps - start_step,  # this process's; a resumed run says where it started
            **({"resumed_from_step": start_step} if start_step else {}),
            **({"peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 1e9} if on_cuda else {})}


def validate(s: Setup, desc: str = "dev") -> dict:
    s.model.eval()
    metrics, predictions = score_task(s.model, s.tok, s.task, s.dev_rows, batch_size=s.cfg.eval.batch_size,
                                      max_new_tokens=s.cfg.eval.max_new_tokens, desc=desc)
    s.model.train()
    s.last_predictions = predictions
    return metrics


def headline(metrics: dict) -> dict:
    """The scalar metrics (for tables and metrics.json's before/after)."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def save_artifact(s: Setup) -> Path:
    model = s.model
    name = "adapter" if hasattr(model, "peft_config") else "model"
    with atomic_dir(s.run_dir / name) as tmp:
        model.save_pretrained(tmp)
        if name == "model":
            s.tok.save_pretrained(tmp)
    return s.run_dir / name


def finetune(cfg: FinetuneConfig) -> Path:
    s = setup(cfg)
    acc = s.accelerator
    trainable, total = T.count_params(s.model)
    acc.print(f"{cfg.method}: training {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%) "
              f"on {len(s.examples)} rows, {s.total_steps} steps; run folder {s.run_dir}")
    before = {}
    if cfg.eval_before and s.dev_rows and acc.is_main_process and not cfg.train.resume:
        before = validate(s, desc="dev before")
        write_json(s.run_dir / "metrics_before.json", before)
    elif (s.run_dir / "metrics_before.json").exists():
        before = json.loads((s.run_dir / "metrics_before.json").read_text())
    train = fit(s)
    train.update(trainable_params=trainable, total_params=total, processes=acc.num_processes)
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return s.run_dir
    artifact = save_artifact(s)  # before the last scoring: a Ctrl-C there keeps the trained weights
    after = validate(s, desc="dev after") if s.dev_rows else {}
    if s.dev_rows:
        write_jsonl(s.run_dir / "predictions.jsonl", s.last_predictions)
    result = {"task": s.task.name, "method": cfg.method, "model": cfg.model, "primary_metric": s.task.primary_metric,
              "before": headline(before), "after": headline(after), "train": train,
              "detail": {"before": before, "after": after}, "artifact": str(artifact), "prompting": s.prompting}
    write_run_report(s.run_dir, result, s.history)
    write_json(s.run_dir / "metrics.json", result)  # written last: its presence marks a complete run
    return s.run_dir


def add_arguments(p):
    add_config_arguments(p)


def run(args):
    from tuneforge.recipes import classifier

    if classifier.wants_classifier(args):  # `head: classifier`: an encoder with a classification head
        cfg = config_from_args(classifier.ClassifierConfig, args)
        run_dir = classifier.finetune_classifier(cfg)
    else:
        cfg = config_from_args(FinetuneConfig, args)
        run_dir = finetune(cfg)
    result = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else None
    if result:
        from tuneforge.recipes.run_report import print_summary

        print_summary(result, run_dir)
