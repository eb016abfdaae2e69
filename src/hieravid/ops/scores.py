"""Eq. 4-5: segment scores and per-segment keep counts."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hieravid.config import check_ratio
from hieravid.schedule import COUNT_DECIMALS, pruned_count

__all__ = ["segment_sizes", "segment_means", "segment_scores", "keep_counts"]


def segment_sizes(segment: torch.Tensor, num_segments: int, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """``(M,)`` members of each segment id ``0..M-1`` in ``segment`` (any shape), counted by ``index_add``:
    unlike ``bincount``, nothing is read back from the device. Every id must be below ``num_segments``."""
    ids = segment.reshape(-1)
    ones = torch.ones(ids.shape[0], dtype=dtype, device=ids.device)
    return torch.zeros(num_segments, dtype=dtype, device=ids.device).index_add_(0, ids, ones)


def segment_means(x: torch.Tensor, frame_segment: torch.Tensor) -> torch.Tensor:
    """Mean token of each segment.

    Args:
        x: ``(T, P, D)`` visual tokens (pre-merge, layer 0).
        frame_segment: ``(T,)`` int64 segment id of each frame, ids ``0..M-1``.

    Returns:
        ``(M, D)`` float32 segment means s_i.
    """
    num_segments = int(frame_segment.max()) + 1
    frame_sums = x.float().sum(dim=1)  # (T, D)
    sums = torch.zeros(num_segments, x.shape[-1], dtype=torch.float32, device=x.device)
    sums.index_add_(0, frame_segment, frame_sums)
    frames = segment_sizes(frame_segment, num_segments, torch.float32) * x.shape[1]
    return sums / frames.unsqueeze(1)


def segment_scores(x: torch.Tensor, frame_segment: torch.Tensor, lam: float = 0.5) -> torch.Tensor:
    """Eq. 4: standardised segment importance z_i (representativeness + diversity).

    ``MV_i = lam * cos(s_i, g_sel_i) + (1 - lam) * (1 - cos(s_i, g_rem_i))`` where g_sel_i is the mean
    of earlier segments' means and g_rem_i that of later ones; a cosine whose set is empty is 0 (first
    or last segment). ``z = (MV - mean MV) / (population std + 1e-8)``; a single segment gets z = 0.
    A token that is not finite (a float16 hidden state overflows to inf) makes its segment's mean, and
    through the running sums the others', not finite: then every z is 0 (each segment at the stage's
    ratio) rather than NaN, which Eq. 5 would turn into keeping nothing.

    Args:
        x: ``(T, P, D)`` visual tokens at layer 0, before merging.
        frame_segment: ``(T,)`` segment id of each frame.
        lam: lambda in [0, 1].

    Returns:
        ``(M,)`` float32 z-scores, summing to zero.
    """
    s = segment_means(x, frame_segment)  # (M, D)
    num_segments = s.shape[0]
    count = torch.arange(num_segments, device=s.device, dtype=torch.float32)
    prefix = torch.cumsum(s, dim=0) - s  # sum of s_j, j < i
    suffix = torch.flip(torch.cumsum(torch.flip(s, [0]), dim=0), [0]) - s  # sum of s_j, j > i
    sides = torch.stack((count, (num_segments - 1) - count))  # (2, M) segments before i, after i
    g = torch.stack((prefix, suffix)) / sides.clamp(min=1).unsqueeze(2)  # (2, M, D) g_sel, g_rem
    # Both cosines in one call; a cosine whose set is empty is 0.
    cos = torch.where(sides > 0, F.cosine_similarity(s.expand_as(g), g, dim=2), 0.0)  # (2, M)
    mv = lam * cos[0] + (1.0 - lam) * (1.0 - cos[1])
    return ((mv - mv.mean()) / (mv.std(unbiased=False) + 1e-8)).nan_to_num_(nan=0.0)


def keep_counts(
    present: torch.Tensor,
    z: torch.Tensor,
    ratio: float,
    *,
    delta: float = 0.1,
    clip: tuple[float, float] = (0.05, 0.95),
    exact_total: bool = False,
) -> torch.Tensor:
    """Eq. 5: how many tokens each segment keeps at one in-LLM stage.

    ``keep_rate_i = clip(1 - ratio + delta * z_i, *clip)`` and ``k_i = floor(n_i * keep_rate_i)``.
    Only the mean keep rate over segments is tied to ``ratio``; the token total may drift.

    With ``exact_total`` (a documented deviation from the reference) the counts are then topped up
    one token at a time in descending z order (skipping full segments), or trimmed in ascending z
    order (skipping empty ones), until they sum to ``n - floor(ratio * n)`` for ``n = sum n_i``.

    Args:
        present: ``(M,)`` int64 tokens of each segment still in the sequence (n_i).
        z: ``(M,)`` segment scores from :func:`segment_scores`.
        ratio: this stage's pruning ratio R_k in [0, 1).

    Returns:
        ``(M,)`` int64 keep counts, ``0 <= k_i <= n_i``.
    """
    check_ratio(ratio, "ratio")
    z = z.double().nan_to_num(nan=0.0)  # float64, as Python floats; a NaN score is no score (see segment_scores)
    rate = (1.0 - ratio + delta * z).clamp(clip[0], clip[1])
    # Rounded before the floor as pruned_count does: 10 tokens at R = 0.9 keep 1, not the float product's 0.
    k = torch.floor(torch.round(present.double() * rate, decimals=COUNT_DECIMALS)).long().clamp(min=0)
    k = torch.minimum(k, present)
    if not exact_total:
        return k
    total = int(present.sum())
    target = total - pruned_count(ratio, total)
    diff = target - int(k.sum())
    if diff == 0:
        return k
    # Passes over the segments in z order (descending to top up, ascending to trim), one token per segment
    # with room in each, until |diff| tokens have moved: after P whole passes segment i has moved
    # min(room_i, P); the last, partial pass moves one in each of the first segments that still have room.
    order = torch.argsort(z, descending=diff > 0, stable=True)  # (M,)
    room = (present - k if diff > 0 else k)[order]  # (M,) tokens each segment can still move
    amount = min(abs(diff), int(room.sum()))
    passes = torch.arange(int(room.max()) + 1, device=room.device)  # (P,)
    moved = torch.minimum(room.unsqueeze(0), passes.unsqueeze(1)).sum(dim=1)  # (P,) tokens after P passes
    whole = int((moved <= amount).sum()) - 1  # the most whole passes that fit
    step = room.clamp(max=whole)  # (M,)
    more = room > whole  # segments the partial pass can take one from
    rest = amount - int(moved[whole])
    step += (more & (torch.cumsum(more.long(), dim=0) <= rest)).long()
    k[order] += step if diff > 0 else -step
    return k
