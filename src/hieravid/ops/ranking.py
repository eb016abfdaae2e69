"""Score-ranking selections shared by the baselines and HieraVid's ablations, and the instruction
similarity used where no attention exists yet (layer 0). Pure tensor code."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["instruction_similarity", "segment_top_k", "top_k_mask"]


def top_k_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` tokens with the highest score, as a mask in sequence order.

    Ties go to the earlier token (a stable sort), so the result is deterministic.

    Args:
        score: ``(N,)`` one score per token (higher is kept first).
        k: tokens to keep, ``0 <= k <= N``.

    Returns:
        ``(N,)`` bool mask with exactly ``k`` True.
    """
    num_tokens = score.numel()
    if not 0 <= k <= num_tokens:
        raise ValueError(f"k must be in [0, {num_tokens}] (the tokens present), got {k}")
    order = torch.argsort(-score.float(), stable=True)  # (N,) best first, ties by index
    keep = torch.zeros(num_tokens, dtype=torch.bool, device=score.device)
    keep[order[:k]] = True
    return keep


def segment_top_k(score: torch.Tensor, segment: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Inside each segment, the ``k_i`` tokens with the highest score (vectorised over segments).

    Tokens are sorted by (segment, descending score, sequence index); a token's rank inside its
    segment is its place in that order minus the segment's start, and it stays when the rank is
    below its segment's ``k_i``.

    Args:
        score: ``(N,)`` score of each token (higher is kept first).
        segment: ``(N,)`` int64 segment id of each token, ids ``0..M-1`` (a segment may be empty).
        k: ``(M,)`` int64 tokens to keep per segment, ``0 <= k_i <= n_i``.

    Returns:
        ``(N,)`` bool mask with exactly ``k_i`` True in segment i, sequence order untouched.
    """
    num_tokens = score.numel()
    present = torch.bincount(segment, minlength=k.numel())
    if present.numel() != k.numel():
        raise ValueError(f"segment ids go up to {present.numel() - 1} but k has {k.numel()} entries")
    if bool((k < 0).any()) or bool((k > present).any()):
        raise ValueError(f"per-segment k must be in [0, n_i]; got k={k.tolist()} for {present.tolist()}")
    by_score = torch.argsort(-score.float(), stable=True)  # (N,) best first, ties by index
    order = by_score[torch.argsort(segment[by_score], stable=True)]  # (N,) grouped by segment
    starts = torch.cumsum(present, 0) - present  # (M,) first place of each segment in `order`
    rank = torch.arange(num_tokens, device=score.device) - starts[segment[order]]  # (N,) rank in segment
    keep = torch.zeros(num_tokens, dtype=torch.bool, device=score.device)
    keep[order[rank < k[segment[order]]]] = True
    return keep


def instruction_similarity(features: torch.Tensor, instruction: torch.Tensor | None) -> torch.Tensor | None:
    """Mean cosine similarity of each visual token to the instruction's tokens (CDPruner's relevance
    before its sign and min-max normalisation), computed in float32.

    ``mean_t cos(x_j, t)`` equals ``<x_j / |x_j|, mean_t t / |t|>``: the cosine to the mean of the
    L2-normalised instruction states times a constant, so after a min-max normalisation it is the
    cosine to that mean. Zero vectors count as similarity 0.

    Args:
        features: ``(N, D)`` visual tokens.
        instruction: ``(n_text, D)`` hidden states of the instruction's tokens (same space).

    Returns:
        ``(N,)`` float32 similarities in [-1, 1], or ``None`` when there is no instruction token.
    """
    if instruction is None or instruction.shape[0] == 0:
        return None
    direction = F.normalize(instruction.float(), dim=-1).mean(dim=0)  # (D,)
    return F.normalize(features.float(), dim=-1) @ direction  # (N,)
