"""Everything a training run needs before its first step: task rows, model (+ LoRA / freeze / QLoRA),
encoded examples, this process's batches, optimizer, schedule and run folder. Every verb that trains
builds a Setup and hands it to training.loop.fit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from tuneforge.config import FinetuneConfig
from tuneforge.data import seq2seq as S2S
from tuneforge.errors import UserError
from tuneforge.models.adapters import base_model
from tuneforge.models.dtypes import use_bf16
from tuneforge.report.run_report import read_prompting
from tuneforge.tasks.splits import Probe, build_probe, build_task, load_rows, truncate_sources
from tuneforge.training.batching import group_batches
from tuneforge.training.checkpoints import latest_checkpoint
from tuneforge.training.losses import TargetOnlyLoss
from tuneforge.training.optim import make_accelerator, make_optimizer, make_scheduler, shards_weights


@dataclass
class Setup:
    cfg: FinetuneConfig
    task: object
    accelerator: object
    model: torch.nn.Module          # the (peft-wrapped) causal or encoder-decoder LM
    tok: object
    loss_module: torch.nn.Module    # wraps the model; fit() hands it to accelerate (DDP, FSDP)
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
    collate: Callable[[list[dict], int], dict] | None = None  # examples -> a padded batch; None: a causal LM's
    count_targets: Callable[[dict], int] | None = None  # what a batch's summed loss is divided by; None: target tokens
    encoder_decoder: bool = False   # T5, BART, Marian: batches are (source, target) pairs, see data/seq2seq.py
    # (this Setup, progress label) -> (dev metrics, prediction rows); None: the task's generation (scoring.score_task)
    score_dev: Callable[[Setup, str], tuple[dict, list[dict]]] | None = None
    probes: list[Probe] = field(default_factory=list)  # eval.probes: scored before and after training
    tracking: object | None = None  # train.report_to's trackers when the caller keeps them open (continual)
    track_prefix: str = ""          # tracker scalar names' prefix (a continual stage's name)
    # FSDP / ZeRO-3, main process: (the model's name in the loss module, a plain copy of the model whose weights
    # stay on the meta device until gather_model fills them)
    unsharded: tuple[str, torch.nn.Module] | None = None


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
        from tuneforge.models.bnb import require_bnb

        require_bnb(quantization, what="method qlora", instead="method=lora")  # before minutes of reading data
    checkpoint_to_resume(cfg)  # before minutes of reading and loading
    task = build_task(cfg)
    kind = model_kind(cfg.model)  # encoder-decoder (T5, BART, Marian) or decoder-only, from config.json
    if kind == "seq2seq":
        S2S.check_task(task)
    train_rows, dev_rows = load_rows(cfg, task)  # FinetuneConfig requires data.train
    probes = load_probes(cfg.eval.probes, seq2seq=kind == "seq2seq")
    prompting = read_prompting(cfg.prompting, task.name, len(dev_rows)) if cfg.prompting else []
    cuda = torch.cuda.is_available()
    bf16 = use_bf16(cfg.train.bf16, "cuda" if cuda else "cpu")
    accelerator = make_accelerator(bf16)
    sharded = shards_weights(accelerator)
    if sharded and quantization:
        raise UserError("method qlora does not run under FSDP or DeepSpeed ZeRO-3 (its NF4 base cannot be sharded "
                        "here); use method=lora, or launch QLoRA with torchrun")
    set_seed(cfg.train.seed)
    # LoRA keeps the frozen base in bf16 where it is fast; full/freeze keep fp32 master weights under autocast.
    # FSDP shards a block's weights as one tensor of one dtype: fp32 throughout, bf16 is its mixed precision's.
    lora_bf16 = bf16 and cfg.method in ("lora", "qlora") and not sharded
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if lora_bf16 else "float32")
    model, tok = load_model(cfg.model, dtype=dtype, adapter=None, device=str(accelerator.device), quantization=quantization,
                            kind=kind)
    encoder_decoder = kind == "seq2seq"
    if quantization:
        from peft import prepare_model_for_kbit_training

        from tuneforge.models.bnb import keep_nf4_layers_trainable

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
        from tuneforge.models.loading import attach_adapter

        model = attach_adapter(model, cfg.adapter, trainable=True)
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
    run_dir = resolve_run_dir(cfg, accelerator)
    if encoder_decoder:
        if cfg.train.share_prefix and "share_prefix" in cfg.train.model_fields_set:
            accelerator.print("note: train.share_prefix is off for an encoder-decoder model (its decoder does not "
                              "read the prompt as a prefix)")
        return assemble(cfg, task, accelerator, model, tok, S2S.Seq2SeqLoss(model), examples, dev_rows, run_dir,
                        prompting=prompting, collate=S2S.collate_seq2seq, count_targets=S2S.target_tokens,
                        encoder_decoder=True, probes=probes)
    share_prefix = cfg.train.share_prefix and not cfg.train.gradient_checkpointing and not sharded
    if cfg.train.share_prefix and not share_prefix:
        why = "FSDP" if sharded else "train.gradient_checkpointing"  # FSDP: the prefix's cache skips its backward hooks
        accelerator.print(f"note: {why} turns train.share_prefix off (each row runs its whole prompt)")
    return assemble(cfg, task, accelerator, model, tok, TargetOnlyLoss(model, share_prefix), examples, dev_rows, run_dir,
                    prompting=prompting, probes=probes)


def load_probes(sections, *, seq2seq: bool = False) -> list[Probe]:
    """Every eval.probes entry's task and rows, read before the model loads so a bad one costs no time."""
    probes = []
    for i, section in enumerate(sections):
        probe = build_probe(section, i)
        if seq2seq:
            try:
                S2S.check_task(probe.task)
            except UserError as e:
                raise UserError(f"eval.probes[{i}] ({section.name}): {e}") from None
        probes.append(probe)
    return probes


def shard_batches(examples: list[dict], train_cfg, accelerator) -> tuple[list[list[int]], int]:
    """(this process's micro-batches, optimizer steps): every process draws the same shuffled batches and takes
    every world-th one, so the processes see disjoint rows."""
    batches = group_batches([len(e["input_ids"]) for e in examples], train_cfg.batch_size, train_cfg.seed,
                            train_cfg.epochs, train_cfg.group_by_length)
    world, rank = accelerator.num_processes, accelerator.process_index
    usable = len(batches) - len(batches) % (world * train_cfg.grad_accum) or len(batches)
    batches = batches[:usable][rank::world]
    total_steps = max(1, len(batches) // train_cfg.grad_accum)
    if train_cfg.max_steps:
        total_steps = min(total_steps, train_cfg.max_steps)
    return batches, total_steps


def assemble(cfg, task, accelerator, model, tok, loss_module, examples: list[dict], dev_rows: list[dict], run_dir: Path,
             **extra) -> Setup:
    """The one place a run's batches, optimizer and schedule are made; fit() hands them to accelerate (prepare)."""
    if shards_weights(accelerator):
        for key in ("resume", "save_every"):
            if getattr(cfg.train, key):
                raise UserError(f"train.{key}: checkpoints are not written or read under FSDP / DeepSpeed ZeRO-3 yet; "
                                f"set train.{key}={'null' if key == 'resume' else 0}, or launch with torchrun (DDP)")
    batches, total_steps = shard_batches(examples, cfg.train, accelerator)
    optimizer = make_optimizer(model, cfg.train)
    scheduler = make_scheduler(optimizer, cfg.train, total_steps)
    return Setup(cfg, task, accelerator, model, tok, loss_module, optimizer, scheduler, examples, batches,
                 list(dev_rows), run_dir, total_steps, **extra)


def prepare(s: Setup) -> None:
    """Hand the loss module (and the model inside it) and the optimizer to accelerate: DDP, or FSDP / ZeRO-3,
    which shard the weights in place. Done as training starts, so whatever runs before it (scoring before
    training) has the plain model. Under sharding the main process keeps a weightless copy of the model
    first, for gather_model."""
    acc = s.accelerator
    if shards_weights(acc):
        if acc.is_main_process:
            name = next(name for name, m in s.loss_module.named_modules() if m is s.model)
            s.unsharded = (name, weightless_copy(s.model))
        if getattr(s.loss_module, "_no_split_modules", None) is None:
            # FSDP's transformer-based wrap names its units after the model's blocks (LlamaDecoderLayer, ...)
            s.loss_module._no_split_modules = getattr(s.model, "_no_split_modules", None)
    s.loss_module, s.optimizer = acc.prepare(s.loss_module, s.optimizer)


def weightless_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The model's modules, config and buffers, its parameters on the meta device (no memory)."""
    import copy

    memo = {id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in model.parameters()}
    return copy.deepcopy(model, memo)


def gather_model(s: Setup) -> torch.nn.Module | None:
    """Under FSDP / ZeRO-3: the trained weights gathered from every process into the main process's plain copy,
    which becomes s.model there (for scoring and saving); None on the other processes. Every process must call
    it. Without sharding: s.model, untouched."""
    acc = s.accelerator
    if not shards_weights(acc):
        return s.model
    state = acc.get_state_dict(s.loss_module)  # whole tensors, on the main process's CPU
    if not acc.is_main_process:
        return None
    prefix, model = s.unsharded
    own = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
    unexpected = model.load_state_dict(own, assign=True, strict=False).unexpected_keys
    base = base_model(model)
    if hasattr(base, "tie_weights"):
        base.tie_weights()  # `assign` made the tied embeddings and LM head two tensors again
    empty = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if empty or unexpected:
        raise RuntimeError(f"the gathered weights do not fit the model: not filled {empty[:5]}, unexpected {unexpected[:5]}")
    s.model = model.to(acc.device)
    return s.model


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
    ckpt = latest_checkpoint(run) if resume == "latest" else Path(resume)
    if ckpt is None or not (ckpt / "step.json").exists():
        raise UserError(f"train.resume: no checkpoint found at {ckpt or run / 'checkpoints'}; "
                        "pass a checkpoints/step-N folder of an interrupted run, or drop train.resume")
    return ckpt


def resolve_run_dir(cfg: FinetuneConfig, accelerator) -> Path:
    """The run folder, made by the main process and the same on every process. `accelerator`: the run's, or
    training.optim.processes() for a verb that needs the folder before it makes one (distill, prune)."""
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


def save_artifact(s: Setup, *, tokenizer: bool = False) -> Path:
    """runs/<name>/adapter (a peft model) or model/; the tokenizer goes with a full model, and with an adapter
    too when `tokenizer` is true."""
    from tuneforge.models.adapters import is_adapter_model
    from tuneforge.models.saving import save_model

    name = "adapter" if is_adapter_model(s.model) else "model"
    return save_model(s.model, s.tok, s.run_dir / name, adapter_tokenizer=tokenizer)


def encode_rows(tok, task, rows: Sequence[dict], max_len: int, *, answers: Sequence[str] | None = None) -> list[dict]:
    """Training conversations → ids with labels on the assistant turn. With `answers` (sequence-level KD)
    the assistant turn is the teacher's generated text instead of the gold one."""
    from tuneforge.data.encode import encode_conversation

    rows = truncate_sources(task, list(rows), tok, "train")  # as finetune does
    feats = []
    for i, row in enumerate(tqdm(rows, desc="tokenizing", leave=False)):
        conv = task.conversation(row)
        if answers is not None:
            conv = [m for m in conv if m["role"] != "assistant"] + [{"role": "assistant", "content": answers[i]}]
        feats.append(encode_conversation(tok, conv, max_len))
    if not any(any(label != -100 for label in f["labels"]) for f in feats):
        raise UserError("no training example has a target token: check data.train columns and task settings")
    return feats


def as_float32(model) -> None:
    """Trainable copies in fp32 (AdamW on bf16 weights loses small updates); bf16 stays for autocast."""
    if next(model.parameters()).dtype != torch.float32:
        model.float()
