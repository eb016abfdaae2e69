"""DyCoke (Tao et al., CVPR 2025, "DyCoke: Dynamic Compression of Tokens for Fast Video Large Language
Models"): its token temporal merging (TTM) stage, before the LLM.

What TTM does (the paper; public code ``KD-TAO/DyCoke``, ``dycole_ttm`` in ``llava/model/llava_arch.py``): the frames
are taken in windows of 4, ``[a, a+1, a+2, a+3]``. The window's first frame ``a`` is the anchor and stays
whole. Frame ``a+1`` and frame ``a+2`` are compared with the anchor, frame ``a+3`` with frame ``a+2`` (as it
was before pruning), slot by slot (cosine similarity of the two tokens of the same slot); each compared
frame keeps only its tokens *least* similar to their reference, ``int((1 - K) P)`` of its P tokens, and
the others are dropped: the code removes them without averaging them into their reference (the paper
calls this merging). K = 0.7 is the default of the public evaluation (``dycoke_k``), which keeps
``(1 + 3 * 0.3) / 4 = 47.5%`` of the visual tokens.

Budget: TTM is the only stage here, before layer 0, so its kept fraction is the relative token budget
(f = B). With ``A`` anchor frames (every 4th, from frame 0) out of T, the ``keep_count(B, T P)`` tokens to
keep are the anchors' ``A P`` plus the rest split as evenly as possible over the ``T - A`` compared frames
(the earlier frames take the leftover tokens), so each compared frame keeps about
``(1 - K) P`` with ``1 - K = (B T - A) / (T - A)``. A budget below ``A / T`` (0.25 when 4 divides T)
cannot be met with whole anchors: it raises a ``ValueError`` naming the smallest reachable budget.

Differences from the public code: the per-frame counts are split to hit the budget exactly (the
reference keeps ``int((1 - K) P)`` in every compared frame); a trailing partial window is treated like a
full one as far as it goes, and every window is processed (the reference skips the second comparison
in its last window when 4 divides T, keeping that window's third frame whole, and drops the last frame
of an odd T); ties in similarity go to the earlier slot. Frame ``a+1`` is pruned by its own similarity to
the anchor, as the paper describes: the code's loop over the odd frames reads the similarities of the
previous pair of frames (``similarities[(i - 2) // 2]``, the last pair for frame 1), so there frame
``a+1`` keeps the slots least similar between frames ``a-2`` and ``a-1``. Kept tokens stay in slot order
with their original positions (the code orders them by similarity, and LLaVA numbers what is fed
0, 1, 2, ...).

Not implemented: DyCoke's second stage, dynamic KV-cache pruning during decoding (at layer 3 of each
decoding step the visual tokens are re-ranked by the new token's attention and only the top fraction
is read from the cache, the kept set being refreshed when that attention changes). It acts on decode
steps, not on the prefill this runtime prunes, so DyCoke here is TTM alone and every decoding step sees
all the tokens TTM kept.
"""

from __future__ import annotations

from typing import Any

import torch

from hieravid.config import check_budget
from hieravid.methods.base import Decision, PruningMethod, VideoTokens
from hieravid.methods.budget import keep_count

__all__ = ["DyCoke", "create_dycoke", "reference_frames", "frame_keep_counts", "ttm_keep"]

#: Frames per TTM window (the paper's and the code's 4).
WINDOW = 4


def reference_frames(num_frames: int) -> torch.Tensor:
    """The frame each frame is compared with: ``-1`` for the anchors (``t % 4 == 0``), ``t - 1`` for the second
    and fourth frame of a window, ``t - 2`` for the third.

    Returns:
        ``(T,)`` int64.
    """
    t = torch.arange(num_frames, device="cpu")
    offset = t % WINDOW
    return torch.where(offset == 0, -1, torch.where(offset == 2, t - 2, t - 1))


def frame_keep_counts(budget: float, num_frames: int, num_slots: int) -> torch.Tensor:
    """Tokens each frame keeps so that the video keeps ``keep_count(budget, T P)`` in all.

    Anchors keep all P; the rest is split as evenly as possible over the compared frames, the earlier
    frames taking one more token when it does not divide.

    Returns:
        ``(T,)`` int64 counts in ``[0, P]``.

    Raises:
        ValueError: when the anchors alone exceed the budget.
    """
    anchors = reference_frames(num_frames) < 0  # (T,)
    num_anchors = int(anchors.sum())
    total = keep_count(budget, num_frames * num_slots)
    rest = total - num_anchors * num_slots
    if rest < 0:
        raise ValueError(
            f"DyCoke keeps every {WINDOW}th frame whole: with {num_frames} frames of visual tokens (temporal "
            f"groups, where the model encodes input frames in groups) the smallest budget it can reach is "
            f"{num_anchors / num_frames:.3f}, got budget {budget:g}; use a budget at least that, or a number "
            f"of frames of tokens that {WINDOW} divides (minimum {1 / WINDOW})"
        )
    compared = num_frames - num_anchors
    counts = torch.full((num_frames,), num_slots, dtype=torch.long, device="cpu")
    if compared:
        share = torch.full((compared,), rest // compared, dtype=torch.long, device="cpu")
        share[: rest % compared] += 1
        counts[~anchors] = share
    return counts


def ttm_keep(x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """TTM's keep mask: each compared frame keeps its ``counts[t]`` tokens least similar (cosine, same slot)
    to its reference frame (:func:`reference_frames`); anchors keep everything.

    Args:
        x: ``(T, P, D)`` visual tokens before the LLM.
        counts: ``(T,)`` tokens kept per frame (P for the anchors).

    Returns:
        ``(T, P)`` bool.
    """
    num_frames, num_slots, _ = x.shape
    ref = reference_frames(num_frames).to(x.device)  # (T,)
    compared = torch.nonzero(ref >= 0).squeeze(1)  # (F,)
    keep = torch.ones(num_frames, num_slots, dtype=torch.bool, device=x.device)
    if compared.numel() == 0:
        return keep
    unit = torch.nn.functional.normalize(x.float(), dim=-1)  # (T, P, D)
    # Cosine of each compared frame with its reference, on strided views (no copy of the frames): the odd
    # frames (2nd and 4th of a window) against the frame before, the 3rd (t % 4 == 2) against t - 2.
    sim_all = torch.zeros(num_frames, num_slots, dtype=unit.dtype, device=x.device)  # (T, P)
    sim_all[1::2] = torch.linalg.vecdot(unit[1::2], unit[0 : num_frames - 1 : 2])
    sim_all[2::WINDOW] = torch.linalg.vecdot(unit[2::WINDOW], unit[0 : num_frames - 2 : WINDOW])
    sim = sim_all[compared]  # (F, P) cosine, 0 for a zero token
    order = torch.argsort(sim, dim=1, stable=True)  # (F, P) least similar first, ties by slot
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(num_slots, device=x.device).expand_as(order))
    keep[compared] = rank < counts.to(x.device)[compared].unsqueeze(1)
    return keep


class DyCoke(PruningMethod):
    """DyCoke's TTM at relative budget ``budget`` (the kept fraction before layer 0).

    Args:
        budget: relative token budget B, at least 0.25 (the anchor frames stay whole).
    """

    def __init__(self, budget: float = 0.3) -> None:
        self.name = "dycoke"
        self.budget = check_budget(budget)
        if self.budget < 1.0 / WINDOW:
            raise ValueError(
                f"DyCoke keeps one frame in {WINDOW} whole, so it cannot go below budget {1 / WINDOW}; got {budget!r}"
            )

    def decision_layers(self, num_layers: int) -> list[int]:
        """TTM before layer 0; none at budget 1."""
        return [] if self.budget >= 1.0 else [0]

    def decide(self, layer: int, tokens: VideoTokens, state: dict) -> Decision:
        num_frames, num_slots = tokens.num_frames, tokens.num_slots
        x = tokens.grid("DyCoke's TTM")  # (T, P, D)
        keep = ttm_keep(x, frame_keep_counts(self.budget, num_frames, num_slots))
        return Decision(keep=keep.reshape(-1))

    def expected_tokens_per_layer(self, num_visual: int, num_layers: int) -> list[int]:
        return [keep_count(self.budget, num_visual)] * num_layers


def create_dycoke(budget: float, **options: Any) -> PruningMethod:
    """Registry factory: ``DyCoke(budget)``; DyCoke takes no options (the window is 4, K follows B)."""
    if options:
        raise ValueError(f"method 'dycoke' takes no options, got {', '.join(sorted(options))}")
    return DyCoke(budget)
