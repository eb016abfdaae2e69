"""Eq. 8: instruction relevance of each visual token, from one query row (or a few) and the keys.

Only the query rows that are needed are used, so the full ``N x N`` attention matrix is never formed;
this works whatever attention kernel the model runs (eager, SDPA, FlashAttention).
"""

from __future__ import annotations

import math

import torch

from hieravid.config import check_choice

__all__ = ["attention_from_queries", "minmax_normalize", "relevance"]


def attention_from_queries(query: torch.Tensor, keys: torch.Tensor, *, causal: bool = True) -> torch.Tensor:
    """Head- and row-averaged softmax attention of a few query rows over all keys.

    Args:
        query: ``(Q, H, d_h)`` queries (after rotary embedding) of the last Q positions of the sequence.
        keys: ``(N, H_kv, d_h)`` keys (after rotary embedding) of all N positions; H must be a multiple
            of H_kv (grouped-query attention: each key head serves H / H_kv query heads).
        causal: query row i (position N - Q + i) sees keys 0..N - Q + i only.

    Returns:
        ``(N,)`` float32 ``a_j = mean over heads and rows of softmax_j(q K^T / sqrt(d_h))``.
    """
    num_rows, num_heads, head_dim = query.shape
    num_keys, num_kv_heads, key_dim = keys.shape
    if key_dim != head_dim or num_heads % num_kv_heads != 0:
        raise ValueError(
            f"query (Q, H, d_h) = {tuple(query.shape)} and keys (N, H_kv, d_h) = {tuple(keys.shape)} do not "
            "match: d_h must agree and H must be a multiple of H_kv"
        )
    if num_rows > num_keys:
        raise ValueError(f"{num_rows} query rows but only {num_keys} keys: the queries are the last positions")
    groups = num_heads // num_kv_heads
    q = query.float().view(num_rows, num_kv_heads, groups, head_dim)
    k = keys.float()
    logits = torch.einsum("qkgd,nkd->qkgn", q, k) / math.sqrt(head_dim)  # (Q, H_kv, G, N)
    if causal and num_rows > 1:
        last_visible = num_keys - num_rows + torch.arange(num_rows, device=keys.device)  # (Q,)
        hidden = torch.arange(num_keys, device=keys.device).unsqueeze(0) > last_visible.unsqueeze(1)  # (Q, N)
        logits = logits.masked_fill(hidden[:, None, None, :], float("-inf"))
    return logits.softmax(dim=-1).mean(dim=(0, 1, 2))


# Values that differ by less than this fraction of their magnitude differ by float32 round-off only
# (the same scores computed by another kernel, or in a batch, differ that much).
_ROUND_OFF = 1e-5


def minmax_normalize(u: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``Norm(u)_j = (u_j - min u + eps) / (max u - min u)``; all ones when u is constant, or constant
    up to round-off (``max u - min u <= 1e-5 max |u|``): stretching round-off to [0, 1] would rank
    tokens by noise."""
    lo, hi = torch.aminmax(u)
    span = hi - lo
    spread = span > _ROUND_OFF * torch.maximum(lo.abs(), hi.abs())
    # Decided on the device (no read back): a constant u divides by zero in the branch not taken.
    return torch.where(spread, (u - lo + eps) / span, 1.0)


def relevance(
    query: torch.Tensor,
    keys: torch.Tensor,
    visual_index: torch.Tensor,
    *,
    sign: str = "negative",
    eps: float = 1e-6,
    causal: bool = True,
) -> torch.Tensor:
    """Eq. 8: ``r = Norm(-a)`` (``sign='negative'``, the reference) or ``Norm(a)`` over the visual tokens.

    Args:
        query: ``(Q, H, d_h)`` query rows of the last Q prompt positions (Q = 1 for the ``last`` query).
        keys: ``(N, H_kv, d_h)`` keys of the whole sequence at this layer.
        visual_index: ``(N_v,)`` int64 sequence positions of the visual tokens still present.

    Returns:
        ``(N_v,)`` float32 relevance in about (0, 1].
    """
    check_choice(sign, "relevance_sign", ("negative", "positive"))
    a = attention_from_queries(query, keys, causal=causal)[visual_index]  # (N_v,)
    return minmax_normalize(-a if sign == "negative" else a, eps)
