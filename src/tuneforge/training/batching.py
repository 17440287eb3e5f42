"""Batches: length-grouped shuffles, padding, and the prompt prefix a batch shares."""

from __future__ import annotations

import math
import random

from tuneforge.data.encode import IGNORE

MIN_SHARED_PREFIX = 8  # below this, two decoder calls cost more than they save


def shared_prefix_length(input_ids, attention_mask, labels) -> int:
    """Tokens all rows share at the start, stopping before the first position whose next token is a target."""
    same = (input_ids == input_ids[:1]).all(dim=0) & attention_mask.bool().all(dim=0)
    first_diff = int(same.logical_not().nonzero()[0]) if not same.all() else input_ids.shape[1]
    has_target = (labels[:, 1:] != IGNORE).any(dim=0)
    first_target = int(has_target.nonzero()[0]) if has_target.any() else input_ids.shape[1]
    # hidden state t predicts token t+1: the prefix must end before the position that predicts a target,
    # and keep one token back so every row still has a suffix to run
    return max(0, min(first_diff, first_target, input_ids.shape[1] - 1))


def group_batches(lengths: list[int], batch_size: int, seed: int, epochs: float,
                  by_length: bool = True) -> list[list[int]]:
    """Shuffled batches; `by_length`: of similar-length rows (sorted within windows of 64 batches), almost no padding."""
    rng = random.Random(seed)
    n = len(lengths)
    window = batch_size * 64 if by_length else batch_size
    batches: list[list[int]] = []
    per_epoch = math.ceil(n / batch_size)
    for _ in range(math.ceil(epochs)):
        order = list(range(n))
        rng.shuffle(order)
        epoch_batches = []
        for start in range(0, n, window):
            chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
            epoch_batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(epoch_batches)
        batches += epoch_batches
    return batches[: max(1, round(per_epoch * epochs))]


def count_target_tokens(batch: dict) -> int:
    """Target tokens of a causal LM batch (position t predicts token t+1): the loss is their mean."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())
