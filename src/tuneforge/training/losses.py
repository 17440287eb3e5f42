"""Losses on target tokens only, with the shared prompt prefix run once per batch."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from tuneforge.data.encode import IGNORE
from tuneforge.generation import cache_kwarg, output_cache
from tuneforge.models.adapters import base_model
from tuneforge.training.batching import MIN_SHARED_PREFIX, shared_prefix_length


class TargetOnlyLoss(nn.Module):
    """Summed cross-entropy on target tokens; the LM head runs only where a label exists.

    For a classification-style target (a label word after a 70-token prompt) this skips ~95% of the
    vocabulary projection, the largest single matmul of a small model. Wrapping the model in a module
    (instead of calling its parts from the loop) keeps DDP's gradient hooks working.

    With `share_prefix`, the tokens every row of the batch starts with (system prompt, instruction) run
    through the decoder once per batch, not once per row; the rows then continue from that prefix's
    key/value cache. The result is the same loss and the same gradients (autograd sums the rows'
    gradients through the shared prefix), for a fraction of the compute: task prompts are mostly prefix.
    """

    def __init__(self, model: nn.Module, share_prefix: bool = True):
        super().__init__()
        self.model = model
        self.share_prefix = share_prefix

    def causal_lm(self):
        return base_model(self.model)

    def forward(self, input_ids, attention_mask, labels):
        lm = self.causal_lm()
        hidden, start = decoder_states(lm.get_decoder(), input_ids, attention_mask, labels, self.share_prefix)
        targets = labels[:, start + 1:]
        keep = targets != IGNORE
        logits = lm.get_output_embeddings()(hidden[:, :-1][keep]).float()
        return F.cross_entropy(logits, targets[keep], reduction="sum"), keep.sum()


def decoder_states(decoder, input_ids, attention_mask, labels, share_prefix: bool = True, start: int | None = None):
    """Final hidden states from position `start` on, and `start`: the length of the prefix all rows share,
    run once and continued from its key/value cache (0 when too short to pay off). Pass `start` to reuse
    one split for a second model on the same batch (distillation's teacher)."""
    if start is None:
        start = shared_prefix_length(input_ids, attention_mask, labels) if share_prefix else 0
    if start < MIN_SHARED_PREFIX or input_ids.shape[0] < 2 or decoder.config.is_encoder_decoder:
        return decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state, 0
    prefix = decoder(input_ids=input_ids[:1, :start], use_cache=True)
    cache = output_cache(prefix)
    cache.batch_repeat_interleave(input_ids.shape[0])
    hidden = decoder(input_ids=input_ids[:, start:], attention_mask=attention_mask, use_cache=False,
                     **{cache_kwarg(decoder): cache}).last_hidden_state
    return hidden, start
