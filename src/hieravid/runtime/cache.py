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
    ``prefill_positions[l]`` is the ``(B, stored by the prefill)`` original position of each of the
    prefill's columns of layer ``l`` (the columns after them, the same in every layer, follow the prefill's
    ``prefill_length`` positions in order), and ``past_valid`` the ``(B, virtual_length)`` attention mask the
    cache has taken so far: a later call whose mask hides more of the past (a batched chat turn masking
    the padding a finished row was fed) is applied through them (:meth:`hide`).
    """

    def __init__(self, config) -> None:
        super().__init__(config=config)
        self._start()

    def _start(self) -> None:
        self.virtual_length = 0  # tokens, as if nothing had been pruned
        self.fixed_length = 0  # of them, those no crop can remove: the prompt up to its last visual token
        self.key_valid: list[torch.Tensor | None] = []
        self.all_valid: list[bool] = []
        self.prefill_positions: list[torch.Tensor] = []
        self.prefill_length = 0
        self.past_valid: torch.Tensor | None = None

    @classmethod
    def for_prefill(cls, cache: object, config) -> PrunedCache:
        """The cache a pruned prefill fills: the caller's empty ``cache`` (a plain :class:`DynamicCache` or a
        PrunedCache), made a PrunedCache in place, so that the object the caller passed is the one filled, as
        without hieravid (a loop that keeps passing it finds the prompt in it); a new one when there is none.
        A subclass of DynamicCache is refused: its own behaviour cannot survive the change of class, and
        filling another cache would leave the caller's empty."""
        if cache is None:
            return cls(config)
        if type(cache) not in (DynamicCache, cls):
            raise ValueError(
                f"hieravid prunes into a plain DynamicCache; this call passes a {type(cache).__name__}: pass a "
                "DynamicCache, or none"
            )
        # Keys stored in any layer, not the length the cache reports: a prefill that failed part-way (out of
        # memory, Ctrl-C) leaves its first layers' keys in a cache that still reports 0 tokens.
        stored = max((DynamicCache.get_seq_length(cache, i) for i in range(len(cache.layers))), default=0)
        if stored:
            raise ValueError(
                f"a pruned prefill starts an empty cache; this one already holds keys of {stored} tokens (a call "
                "that failed part-way leaves them): pass a new DynamicCache, or none"
            )
        cache.__class__ = cls
        cache._start()
        return cache

    def release(self) -> None:
        """Make a cache :meth:`for_prefill` converted in place from the caller's DynamicCache a plain
        DynamicCache again, without the pruning's bookkeeping, if it stores nothing (a prefill refused before
        its first layer gives it back so). One that stores keys stays a PrunedCache reporting 0 tokens, so
        that a retry with it is refused, naming the fix, rather than taken for a cached prefix."""
        if any(self.stored_length(i) for i in range(len(self.layers))):
            return
        for name in ("virtual_length", "fixed_length", "key_valid", "all_valid", "prefill_positions", "prefill_length",
                     "past_valid"):
            self.__dict__.pop(name, None)
        self.__class__ = DynamicCache

    def reset(self) -> None:
        """Empty every layer, as :meth:`DynamicCache.reset` does: the emptied cache is a plain DynamicCache
        again, for a new prompt with hieravid or without."""
        super().reset()
        self._start()
        self.release()

    def get_seq_length(self, layer_idx: int = 0) -> int:  # noqa: D401 - same contract as the parent
        """Original sequence length seen so far (tokens), whatever was pruned."""
        return self.virtual_length

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        """Only a model without hieravid asks (its own attention masks assume every layer holds the same
        tokens): refuse, naming the fix. The runtime builds its masks from ``key_valid``."""
        raise ValueError(
            "this cache holds a pruned prefill (each layer keeps its own tokens), which the model without "
            "hieravid cannot continue: continue it with hieravid applied (the same method), or run the "
            "conversation again from the full prompt"
        )

    def stored_length(self, layer_idx: int) -> int:
        """Tokens actually stored for ``layer_idx``."""
        return super().get_seq_length(layer_idx)

    def hide(self, hidden: torch.Tensor) -> None:
        """Mask the keys of the original positions ``hidden`` (B, virtual_length) marks, in every layer."""
        decoded = hidden[:, self.prefill_length :]  # the columns after the prefill's, the same in every layer
        for layer_idx, valid in enumerate(self.key_valid):
            positions = self.prefill_positions[layer_idx]  # (B, stored by the prefill)
            self.key_valid[layer_idx] = valid & ~torch.cat([hidden.gather(1, positions), decoded], dim=1)
            self.all_valid[layer_idx] = False
        self.past_valid = self.past_valid & ~hidden

    def _select_rows(self, select) -> None:
        """Apply ``select`` (a function of a (B, ...) tensor) to every per-row record of the pruning."""
        self.key_valid = [None if m is None else select(m) for m in self.key_valid]
        self.prefill_positions = [select(p) for p in self.prefill_positions]
        if self.past_valid is not None:
            self.past_valid = select(self.past_valid)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._select_rows(lambda m: m.index_select(0, beam_idx.to(m.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._select_rows(lambda m: m.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._select_rows(lambda m: m[indices.to(m.device) if torch.is_tensor(indices) else indices])

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last ``-tokens_to_remove`` tokens from every layer (``generate`` does so when assisted or
        prompt-lookup decoding rejects guessed tokens, which it appends to the prompt at first). Text is never
        pruned and each row ends with its last token, so the last tokens are the same columns in every layer,
        back to the prompt's last visual token: before it, each layer keeps its own subset."""
        if tokens_to_remove > 0:
            raise ValueError(
                f"crop takes the negative number of tokens to remove, got {tokens_to_remove} (as DynamicCache)"
            )
        count = -tokens_to_remove
        if self.virtual_length - count < self.fixed_length:
            raise ValueError(
                f"cannot remove {count} tokens from a pruned cache: only the "
                f"{self.virtual_length - self.fixed_length} after the prompt's last visual token are the same in "
                "every layer"
            )
        super().crop(tokens_to_remove)
        if count:
            self.key_valid = [None if m is None else m[:, : m.shape[1] - count] for m in self.key_valid]
            self.virtual_length -= count
            if self.past_valid is not None:
                self.past_valid = self.past_valid[:, : self.virtual_length]
            into_prefill = self.prefill_length - self.virtual_length  # the prompt's own last (text) columns
            if into_prefill > 0:
                self.prefill_positions = [p[:, : p.shape[1] - into_prefill] for p in self.prefill_positions]
                self.prefill_length -= into_prefill
