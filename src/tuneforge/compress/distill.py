"""Distillation's training loss: the student matches the teacher's next-token distribution on target tokens."""

from __future__ import annotations

import torch
from torch import nn

from tuneforge.compress.blocks import body
from tuneforge.compress.kd import distill_loss
from tuneforge.training.batching import shared_prefix_length
from tuneforge.training.losses import decoder_states


class DistillLoss(nn.Module):
    """Summed ratio·KD + (1 − ratio)·CE over target tokens, from both models' final hidden states."""

    def __init__(self, student: nn.Module, teacher: nn.Module, kd, share_prefix: bool = True):
        super().__init__()
        self.model = student
        self.frozen = (teacher,)  # a tuple: not a registered submodule, so DDP and optimizers never see it
        self.kd = kd
        # KD on every token covers the prompt, so the prefix rows share cannot be skipped
        self.share_prefix = share_prefix and kd.tokens != "all"

    def forward(self, input_ids, attention_mask, labels):
        teacher, kd = self.frozen[0], self.kd
        s_hidden, start = decoder_states(body(self.model), input_ids, attention_mask, labels, self.share_prefix)
        kd_on = None
        if kd.tokens == "all":
            kd_on = attention_mask[:, start:]
        elif kd.tokens == "text":  # the predictions made from each row's own tokens (after the shared prefix)
            # start is that prefix when decoder_states shared it; else find it (a one-row batch has none)
            prefix = start or (shared_prefix_length(input_ids, attention_mask, labels) if input_ids.shape[0] > 1 else 0)
            kd_on = attention_mask.clone()
            kd_on[:, :prefix + 1] = 0  # kd_on marks predicted tokens; token `prefix` is predicted from the prefix
            kd_on = kd_on[:, start:]
        with torch.no_grad():
            t_hidden, _ = decoder_states(body(teacher), input_ids, attention_mask, labels, start=start)
        loss, info = distill_loss(
            s_hidden, t_hidden, labels[:, start:], self.model.get_output_embeddings(), teacher.get_output_embeddings(),
            kind=kd.loss, temperature=kd.temperature, beta=kd.beta, ratio=kd.ratio, chunk_tokens=kd.chunk_tokens,
            kd_on=kd_on,
        )
        return loss * info["targets"], info["targets"]
