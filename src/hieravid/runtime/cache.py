"""A KV cache whose layers hold different numbers of tokens after pruning."""

from __future__ import annotations

import torch
from transformers import DynamicCache

__all__ = ["PrunedCache"]


class PrunedCache(DynamicCache):
    """A :class:`transformers.DynamicCache` that remembers what pruning removed.

    Each layer stores only the tokens that entered it. ``get_seq_length()`` reports the *original*
    sequence length (prompt before pruning plus generated tokens), so code that derives the positions of
    new tokens from the cache length continues from the original positions. ``key_valid[l]`` is the
    ``(B, stored_l)`` bool mask of real (non-padding) keys of layer ``l``; the runtime builds every decoding
    mask from it. ``all_valid[l]`` is True when that mask is known to be all True (then SDPA needs no mask,
    and the runtime need not read the mask back from the device to find out); False means "look".
    """

    def __init__(self, config) -> None:
        super().__init__(config=config)
        self.virtual_length = 0  # tokens, as if nothing had been pruned
        self.key_valid: list[torch.Tensor | None] = []
        self.all_valid: list[bool] = []

    def get_seq_length(self, layer_idx: int = 0) -> int:  # noqa: D401 - same contract as the parent
        """Original sequence length seen so far (tokens), whatever was pruned."""
        return self.virtual_length

    def stored_length(self, layer_idx: int) -> int:
        """Tokens actually stored for ``layer_idx``."""
        return super().get_seq_length(layer_idx)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self.key_valid = [None if m is None else m.index_select(0, beam_idx.to(m.device)) for m in self.key_valid]
