"""A KV cache layer with spare columns, for the transformers engine's decode steps.

transformers' DynamicLayer appends each step's keys and values with torch.cat, copying the whole cache every
step: at 8 rows x 300 tokens that was 15% of a decode step of the embedded model. RoomyLayer keeps them as
views of larger buffers and writes the new column in place, regrowing (one copy) every ROOM steps or when the
engine has replaced keys/values itself (merging new rows in, dropping finished ones)."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

ROOM = 64  # spare columns: one full copy per 64 decode steps instead of one per step


def _is_prefix_view(view: torch.Tensor, buffer: torch.Tensor | None) -> bool:
    return (buffer is not None and view.dim() == 4 and view.data_ptr() == buffer.data_ptr()
            and view.shape[0] == buffer.shape[0] and view.stride() == buffer.stride())


class RoomyLayer(DynamicLayer):
    key_buffer: torch.Tensor | None = None
    value_buffer: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        have = self.room_for(key_states, value_states)
        end = have + key_states.shape[-2]
        self.key_buffer[:, :, have:end] = key_states
        self.value_buffer[:, :, have:end] = value_states
        self.advance(end)
        return self.keys, self.values

    def room_for(self, key_states: torch.Tensor, value_states: torch.Tensor) -> int:
        """Make the buffers hold `key_states`' columns after the current ones; returns how many are held now."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        have = self.keys.shape[-2] if self.keys.dim() == 4 else 0
        end = have + key_states.shape[-2]
        # `<`, not `<=`: a cache never fills its buffer, so that a compiled step (lean_decode) never meets a cache
        # as wide as its buffer, a case its graphs would need compiling for (the view is then contiguous)
        roomy = (_is_prefix_view(self.keys, self.key_buffer) and _is_prefix_view(self.values, self.value_buffer)
                 and end < self.key_buffer.shape[-2])
        if not roomy:
            self.key_buffer = self._grown(self.keys, key_states, have, end + ROOM)
            self.value_buffer = self._grown(self.values, value_states, have, end + ROOM)
        return have

    def advance(self, end: int) -> None:
        """The first `end` columns of the buffers are the cache now (written in place by the caller)."""
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]

    @staticmethod
    def _grown(old: torch.Tensor, new: torch.Tensor, have: int, columns: int) -> torch.Tensor:
        b, h, _, d = new.shape
        buffer = new.new_empty((b, h, columns, d))
        if have:
            buffer[:, :, :have] = old
        return buffer


def roomy_cache(config):
    """A DynamicCache for `config` whose layers are RoomyLayers (full attention only: the engine checks that)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    cache.layers = [RoomyLayer() for _ in cache.layers]
    return cache
