"""HieraVid's decisions (spec Eq. 11): what to merge before the LLM and what to keep at each stage.

A method only decides: it takes tensors and returns masks. The runtime applies the decisions to a
model's hidden states, positions and caches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hieravid.config import HieraVidConfig
from hieravid.ops import (
    keep_counts,
    merge_count,
    merge_set,
    same_slot_similarity,
    segment_bin_select,
    segment_dpp_select,
    segment_ids,
    segment_scores,
    temporal_run_merge,
)

__all__ = ["Stage1Decision", "decide_stage1", "decide_stage", "selector_for_stage"]


@dataclass(frozen=True)
class Stage1Decision:
    """Stage 1 (before layer 0) for one video laid out as ``(T, P, D)``.

    Attributes:
        keep: ``(T, P)`` bool, the tokens that stay (run anchors).
        features: ``(N_kept, D)`` the kept tokens in sequence order, merged runs averaged in.
        frame_segment: ``(T,)`` int64 segment id of each frame.
        token_segment: ``(T, P)`` int64 segment id of each token (a merged token keeps its anchor's).
        z: ``(M,)`` float32 segment scores (Eq. 4), reused at every later stage.
        num_segments: M.
    """

    keep: torch.Tensor
    features: torch.Tensor
    frame_segment: torch.Tensor
    token_segment: torch.Tensor
    z: torch.Tensor

    @property
    def num_segments(self) -> int:
        return int(self.z.numel())

    @property
    def num_kept(self) -> int:
        return int(self.keep.sum())


def decide_stage1(x: torch.Tensor, rho: float, config: HieraVidConfig) -> Stage1Decision:
    """Segment the video (Eq. 1-2), score the segments (Eq. 4) and merge ``floor(rho * T * P)`` tokens
    into their temporal run anchors (Eq. 3).

    Args:
        x: ``(T, P, D)`` visual tokens as they enter decoder layer 0.
        rho: stage-1 pruning ratio in [0, 1).
        config: the HieraVid switches.
    """
    num_frames, num_slots, _ = x.shape
    similarity = same_slot_similarity(x)  # (T, P)
    merge_mask = merge_set(similarity, merge_count(num_frames, num_slots, rho))  # (T, P)
    frame_segment = segment_ids(
        x,
        method=config.segmentation,
        similarity=similarity,
        merge_mask=merge_mask,
        indicator=config.overlap_indicator,
        tau=config.tau,
        beta=config.beta,
        avgpool_threshold=config.avgpool_threshold,
    )
    z = segment_scores(x, frame_segment, config.lam)
    merged = temporal_run_merge(x, merge_mask)
    return Stage1Decision(
        keep=merged.keep,
        features=merged.features,
        frame_segment=frame_segment,
        token_segment=frame_segment[merged.anchor_frame],
        z=z,
    )


def selector_for_stage(stage: int, config: HieraVidConfig) -> str:
    """Which selector runs at in-LLM stage ``stage`` (2..S): ``dpp``, or ``bins`` at stage 2 when the
    config asks for the relevance-bins variant."""
    if stage < 2:
        raise ValueError(f"in-LLM stages are numbered from 2, got stage={stage}")
    return "bins" if config.in_llm_selector == "bins" and stage == 2 else "dpp"


def decide_stage(
    hidden: torch.Tensor,
    relevance: torch.Tensor,
    segment: torch.Tensor,
    z: torch.Tensor,
    ratio: float,
    config: HieraVidConfig,
    selector: str = "dpp",
) -> torch.Tensor:
    """One in-LLM stage: per-segment keep counts (Eq. 5), then conditional DPP (Eq. 9-10) or relevance
    bins inside each segment.

    Args:
        hidden: ``(N, D)`` hidden states of the visual tokens still present, in sequence order.
        relevance: ``(N,)`` relevance r (Eq. 8).
        segment: ``(N,)`` int64 segment id of each token.
        z: ``(M,)`` segment scores from stage 1.
        ratio: this stage's pruning ratio R_k in [0, 1).

    Returns:
        ``(N,)`` bool keep mask.
    """
    present = torch.bincount(segment, minlength=z.numel())
    k = keep_counts(
        present, z, ratio, delta=config.delta, clip=config.keep_clip, exact_total=config.exact_total
    )
    if selector == "bins":
        return segment_bin_select(relevance, segment, k)
    return segment_dpp_select(hidden, relevance, segment, k)
