"""Attention masks for sequences whose rows were pruned and re-padded (left padding)."""

from __future__ import annotations

import torch

__all__ = ["attention_mask"]


def attention_mask(
    key_valid: torch.Tensor, query_len: int, implementation: str, dtype: torch.dtype, all_valid: bool | None = None
) -> torch.Tensor | None:
    """The 4-D mask for ``query_len`` new queries over ``K`` keys (the queries are the last keys).

    Args:
        key_valid: ``(B, K)`` bool, False at padding keys.
        query_len: q, number of query rows (the last q of the K positions).
        implementation: the model's attention implementation (``sdpa`` or ``eager``).
        dtype: float dtype of the eager additive mask.
        all_valid: whether ``key_valid`` is all True, when the caller knows (None: look; that reads the
            tensor, a device sync on a GPU).

    Returns:
        ``None`` where the kernel's own causal handling is exact (SDPA, nothing padded, prefill or a
        single query); otherwise ``(B, 1, q, K)``: bool (True = attend) for SDPA, additive float for
        eager. A query row always sees its own key, so padding rows stay finite.
    """
    batch, num_keys = key_valid.shape
    if implementation != "eager" and query_len in (1, num_keys):
        if bool(key_valid.all()) if all_valid is None else all_valid:
            return None
    device = key_valid.device
    query_pos = num_keys - query_len + torch.arange(query_len, device=device)  # (q,)
    key_pos = torch.arange(num_keys, device=device)  # (K,)
    causal = key_pos[None, :] <= query_pos[:, None]  # (q, K)
    allowed = causal[None] & key_valid[:, None, :]  # (B, q, K)
    allowed |= (key_pos[None, :] == query_pos[:, None])[None]
    allowed = allowed[:, None]  # (B, 1, q, K)
    if implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
    return allowed
