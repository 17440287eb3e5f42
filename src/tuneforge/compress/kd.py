"""Knowledge-distillation losses and student builders.

Divergences between the teacher distribution P = softmax(t / T) and the student's Q = softmax(s / T), per
target token, summed over the vocabulary and multiplied by T² (Hinton et al.: keeps gradient sizes
comparable across temperatures):

- forward KL  KL(P‖Q) = Σ P (log P − log Q)     mode-covering: the student spreads over all teacher modes
- reverse KL  KL(Q‖P)                           mode-seeking: the student commits to the teacher's main mode
- generalized JSD(β) = β·KL(P‖M) + (1−β)·KL(Q‖M), M = β·P + (1−β)·Q (Agarwal et al. 2024, GKD).
  JSD(β)/β → forward KL as β → 0 and JSD(β)/(1−β) → reverse KL as β → 1; as in GKD, β = 0 and β = 1 are
  taken to mean those two KLs.

`distill_loss` mixes the divergence with the student's cross-entropy on the target tokens,
ratio·KD + (1 − ratio)·CE, each averaged over its own tokens (KD: the targets, or every token). It works
from hidden states: logits are formed chunk by chunk through each model's LM head in fp32, and each chunk
is recomputed in the backward pass (activation checkpointing), so the full-vocabulary logits of a batch
never exist in memory at once.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tuneforge.compress.blocks import decoder_blocks, keep_blocks, least_important
from tuneforge.errors import UserError

KINDS = ("forward_kl", "reverse_kl", "jsd")


def divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, kind: str = "forward_kl",
               temperature: float = 1.0, beta: float = 0.5) -> torch.Tensor:
    """Per-token divergence (…, vocab) → (…), in fp32, times T²."""
    if kind not in KINDS:
        raise UserError(f"kd.loss '{kind}' must be one of {', '.join(KINDS)}")
    if temperature <= 0:
        raise UserError(f"kd.temperature must be > 0, got {temperature}")
    vocab = min(student_logits.shape[-1], teacher_logits.shape[-1])  # embeddings may be padded differently
    log_q = F.log_softmax(student_logits[..., :vocab].float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits[..., :vocab].float() / temperature, dim=-1)
    if kind == "jsd" and beta in (0.0, 1.0):
        kind = "forward_kl" if beta == 0.0 else "reverse_kl"
    if kind == "forward_kl":
        value = _kl(log_p, log_q)
    elif kind == "reverse_kl":
        value = _kl(log_q, log_p)
    else:
        if not 0 < beta < 1:
            raise UserError(f"kd.beta must be in [0, 1], got {beta}")
        log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), dim=0)
        value = beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)
    return value * temperature**2


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(A‖B) over the last axis from log-probabilities; 0·log 0 counts as 0."""
    return (log_a.exp() * (log_a - log_b)).nan_to_num(0.0).sum(-1)


def target_positions(hidden: torch.Tensor, labels: torch.Tensor,
                     predicted: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states that predict a token (position i predicts token i+1), and those tokens' labels.

    The predicted tokens are the targets (labels ≠ −100), or those marked in `predicted` (a bool mask shaped
    like labels, a superset): there the label stays −100 when the token is not a target."""
    shifted = labels[:, 1:]
    keep = shifted != -100 if predicted is None else predicted[:, 1:].bool() | (shifted != -100)
    return hidden[:, :-1][keep], shifted[keep]


def _chunk_sums(s_hidden, t_hidden, targets, s_head, t_head, kind, temperature, beta):
    s_logits = s_head(s_hidden).float()
    with torch.no_grad():
        t_logits = t_head(t_hidden).float()
    kd = divergence(s_logits, t_logits, kind=kind, temperature=temperature, beta=beta).sum()
    ce = F.cross_entropy(s_logits, targets, reduction="sum", ignore_index=-100)  # KD-only positions: −100
    return kd, ce


def distill_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, labels: torch.Tensor,
                 student_head: nn.Module, teacher_head: nn.Module, *, kind: str = "forward_kl",
                 temperature: float = 1.0, beta: float = 0.5, ratio: float = 0.5,
                 chunk_tokens: int = 256, kd_on: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """ratio·KD + (1 − ratio)·CE, each averaged over its own tokens, from final hidden states.

    CE is taken on the target tokens (labels ≠ −100); KD on them too, or on every token marked in `kd_on`
    (e.g. the attention mask: the prompt as well). The teacher's next-token distribution over the whole
    text is a far denser signal than one answer token, which a student cut from the teacher needs."""
    if not 0 <= ratio <= 1:
        raise UserError(f"kd.ratio must be in [0, 1], got {ratio}")
    s_h, targets = target_positions(student_hidden, labels, kd_on)
    t_h, _ = target_positions(teacher_hidden.detach(), labels, kd_on)
    n_kd, n_ce = targets.numel(), int((targets != -100).sum())
    if n_ce == 0:
        zero = student_hidden.sum() * 0
        return zero, {"kd": 0.0, "ce": 0.0, "targets": 0}
    kd_total = ce_total = 0
    for start in range(0, n_kd, chunk_tokens):
        part = slice(start, start + chunk_tokens)
        args = (s_h[part], t_h[part], targets[part], student_head, teacher_head, kind, temperature, beta)
        if torch.is_grad_enabled() and s_h.requires_grad:
            kd, ce = checkpoint(_chunk_sums, *args, use_reentrant=False)
        else:
            kd, ce = _chunk_sums(*args)
        kd_total = kd_total + kd
        ce_total = ce_total + ce
    kd_mean, ce_mean = kd_total / n_kd, ce_total / n_ce
    loss = ratio * kd_mean + (1 - ratio) * ce_mean
    return loss, {"kd": kd_mean.item(), "ce": ce_mean.item(), "targets": n_ce, "kd_tokens": n_kd}


# -- students -----------------------------------------------------------------------------------------


def needs_importance(spec: str | Sequence[int]) -> bool:
    return isinstance(spec, str) and spec.startswith("importance:")


def choose_blocks(total: int, spec: str | Sequence[int], importance: Sequence[float] | None = None) -> list[int]:
    """'every_other' → 0, 2, 4, …; 'evenly:K' → K blocks evenly spread, first and last included;
    'first:K' → the first K; 'importance:K' → the K blocks that change the hidden state most (needs
    `importance`, from blocks.block_importance); or an explicit list of block indices."""
    if isinstance(spec, str):
        if spec == "every_other":
            return list(range(0, total, 2))
        kind, _, count = spec.partition(":")
        if kind in ("evenly", "first", "importance") and count.isdigit() and 0 < int(count) <= total:
            k = int(count)
            if kind == "first":
                return list(range(k))
            if kind == "importance":
                if importance is None or len(importance) != total:
                    raise UserError("student.keep_blocks 'importance:K' needs block importance on calibration rows")
                dropped = set(least_important(importance, total - k))
                return [i for i in range(total) if i not in dropped]
            return sorted({round(i * (total - 1) / max(k - 1, 1)) for i in range(k)})
        raise UserError(
            f"student.keep_blocks '{spec}' must be every_other, evenly:K, first:K, importance:K (1 ≤ K ≤ {total}) "
            "or a list of indices"
        )
    bad = [i for i in spec if not 0 <= int(i) < total]
    if bad or not spec:
        raise UserError(f"student.keep_blocks {list(spec)}: indices must be within 0..{total - 1}")
    return sorted({int(i) for i in spec})


def student_from_teacher(teacher: nn.Module, keep: str | Sequence[int],
                         importance: Sequence[float] | None = None) -> tuple[nn.Module, list[int]]:
    """A copy of the teacher with only the chosen blocks, initialised from the teacher's weights."""
    _, _, blocks = decoder_blocks(teacher)
    chosen = choose_blocks(len(blocks), keep, importance)
    student = copy.deepcopy(teacher)
    return keep_blocks(student, chosen), chosen


def check_same_tokenizer(teacher_tok, student_tok, name: str, key: str = "student.model") -> None:
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        hint = ", or use keep_blocks" if key == "student.model" else ""
        raise UserError(
            f"{key} '{name}' does not share the other model's tokenizer (vocabularies differ); "
            f"logit distillation needs the same tokens: pick a model of the same family{hint}"
        )
