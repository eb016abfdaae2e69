"""Segment-level operations (spec Eq. 1-2 and the merge set): same-slot similarity and segmentation.

All functions take one video's visual tokens laid out as ``(T, P, D)``: T frames, P token slots per
frame, D channels. Pure torch; nothing here knows about models.
"""

from __future__ import annotations

import warnings

import torch

from hieravid.config import check_choice, check_ratio
from hieravid.schedule import pruned_count
from hieravid.warning import HieravidWarning

__all__ = [
    "same_slot_similarity",
    "merge_set",
    "merge_count",
    "warn_if_merge_is_capped",
    "segment_ids",
    "check_video_tokens",
]


def check_video_tokens(x: torch.Tensor, name: str = "x") -> None:
    """Raise a ``ValueError`` unless ``x`` is a ``(T, P, D)`` tensor with T >= 1 and P >= 1."""
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape (frames T, slots P, channels D), got {tuple(x.shape)}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} needs at least one frame and one token slot, got shape {tuple(x.shape)}")


def same_slot_similarity(x: torch.Tensor) -> torch.Tensor:
    """Eq. 1: cosine similarity of each token with the same slot in the previous frame.

    Args:
        x: ``(T, P, D)`` visual tokens as they enter decoder layer 0.

    Returns:
        ``(T, P)`` float32 similarities; frame 0 (no predecessor) and zero-norm tokens get ``-inf``:
        :func:`merge_set` never merges frame 0 and ranks zero-norm tokens last (it takes them only when
        K exceeds the finite candidates).
    """
    check_video_tokens(x)
    xf = x.float()
    # (T-1, P): <x_t, x_{t-1}> / (|x_t| |x_{t-1}|), without materialising normalised copies.
    dots = torch.linalg.vecdot(xf[1:], xf[:-1])
    norms = torch.linalg.vector_norm(xf, dim=-1)  # (T, P)
    scale = norms[1:] * norms[:-1]
    # A zero (or underflowing) norm product, or a non-finite one, gives -inf.
    sim = torch.where((scale > 0) & torch.isfinite(scale), dots / scale, float("-inf"))
    first = torch.full((1, x.shape[1]), float("-inf"), dtype=sim.dtype, device=sim.device)
    return torch.cat([first, sim], dim=0)


def merge_count(num_frames: int, num_slots: int, rho: float) -> int:
    """K of Eq. 3: ``floor(rho * N_v)`` tokens to merge away, capped at the ``(T-1) * P`` candidates.

    The cap only binds when ``rho > (T-1)/T`` (e.g. two frames and rho > 0.5): frame 0 has no
    predecessor, so no more tokens can be merged. A one-frame video merges nothing.
    """
    check_ratio(rho, "rho")
    return min(pruned_count(rho, num_frames * num_slots), (num_frames - 1) * num_slots)


def warn_if_merge_is_capped(num_frames: int, num_slots: int, rho: float, name: str) -> None:
    """Stage 1 merges into the previous frame, so it removes at most ``(T-1) * P`` tokens: with fewer
    frames than ``1 / (1 - rho)`` it merges less than rho asks, the later stages do not make up for it,
    and the prefill keeps more than its budget. Say so (once per call site) rather than stay silent."""
    asked = pruned_count(rho, num_frames * num_slots)
    possible = merge_count(num_frames, num_slots, rho)
    if possible < asked:
        warnings.warn(
            f"{name}: with {num_frames} frame(s) (temporal groups) stage 1 can merge {possible} of the {asked} "
            f"tokens its ratio {rho:g} asks for (the first frame has no predecessor), so this prefill keeps "
            "more visual tokens than its budget: give the video more frames",
            HieravidWarning, stacklevel=3,
        )


def merge_set(similarity: torch.Tensor, k: int) -> torch.Tensor:
    """The global Top-K merge set M of Eq. 3.

    Args:
        similarity: ``(T, P)`` from :func:`same_slot_similarity`.
        k: number of tokens to merge, at most ``(T-1) * P`` (see :func:`merge_count`).

    Returns:
        ``(T, P)`` bool mask of the K highest-similarity candidates. Ties break towards the earlier
        token in sequence order (stable sort), so the result is deterministic.
    """
    num_slots = similarity.shape[1]
    num_candidates = (similarity.shape[0] - 1) * num_slots
    if not 0 <= k <= num_candidates:
        raise ValueError(f"k must be in [0, (T-1)*P = {num_candidates}], got {k}")
    # Rank frames 1..T-1 only: frame 0 has no predecessor even when other candidates score -inf too.
    candidates = similarity[1:].reshape(-1)
    order = torch.sort(candidates, descending=True, stable=True).indices[:k] + num_slots
    mask = torch.zeros(similarity.numel(), dtype=torch.bool, device=similarity.device)
    mask[order] = True
    return mask.view_as(similarity)


def segment_ids(
    x: torch.Tensor,
    *,
    method: str = "merge_ratio",
    similarity: torch.Tensor | None = None,
    merge_mask: torch.Tensor | None = None,
    indicator: str = "tau",
    tau: float = 0.6,
    beta: float = 0.4,
    avgpool_threshold: float = 0.95,
) -> torch.Tensor:
    """Eq. 2: split the video into segments (maximal runs of frames).

    Args:
        x: ``(T, P, D)`` visual tokens at layer 0.
        method: ``merge_ratio`` (overlap ratio O^t below beta opens a segment), ``avgpool`` (cosine of
            mean-pooled adjacent frames below ``avgpool_threshold`` opens a segment) or ``none`` (one
            segment).
        similarity: optional precomputed ``(T, P)`` Eq. 1 similarities (``merge_ratio`` only).
        merge_mask: ``(T, P)`` Eq. 3 merge set; required when ``indicator == "topk"``.
        indicator: ``tau`` (O^t counts slots with S^t(p) > tau) or ``topk`` (counts merge-set members).

    Returns:
        ``(T,)`` int64 segment id of each frame, starting at 0 and non-decreasing. Frame 0 opens
        segment 0; a one-frame video is one segment.
    """
    check_video_tokens(x)
    check_choice(method, "segmentation", ("merge_ratio", "avgpool", "none"))
    num_frames = x.shape[0]
    if method == "none" or num_frames == 1:
        return torch.zeros(num_frames, dtype=torch.long, device=x.device)
    if method == "avgpool":
        pooled = x.float().mean(dim=1)  # (T, D)
        cos = torch.nn.functional.cosine_similarity(pooled[1:], pooled[:-1], dim=-1)  # (T-1,)
        cut = cos < avgpool_threshold
    else:
        check_choice(indicator, "overlap_indicator", ("tau", "topk"))
        if indicator == "topk":
            if merge_mask is None:
                raise ValueError("overlap_indicator='topk' needs the Eq. 3 merge set: pass merge_mask")
            hits = merge_mask[1:].float()
        else:
            sim = same_slot_similarity(x) if similarity is None else similarity
            hits = (sim[1:] > tau).float()
        overlap = hits.mean(dim=1)  # (T-1,) O^t for t >= 1
        cut = overlap < beta
    starts = torch.cat([torch.zeros(1, dtype=torch.long, device=x.device), cut.long()])
    return torch.cumsum(starts, dim=0)
