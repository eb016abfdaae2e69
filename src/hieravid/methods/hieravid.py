"""HieraVid's decisions (spec Eq. 11): what to merge before the LLM and what to keep at each stage.

A method only decides: it takes tensors and returns masks. The runtime applies the decisions to a
model's hidden states, positions and caches.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hieravid.config import HieraVidConfig
from hieravid.methods.base import Decision, PruningMethod, VideoTokens
from hieravid.ops import (
    keep_counts,
    minmax_normalize,
    merge_count,
    merge_set,
    prepare_greedy,
    same_slot_similarity,
    segment_bin_select,
    segment_dpp_select,
    segment_ids,
    segment_scores,
    segment_sizes,
    temporal_run_merge,
    warn_if_merge_is_capped,
)
from hieravid.schedule import Schedule, solve_schedule
from hieravid.warning import HieravidWarning

__all__ = ["HieraVid", "Stage1Decision", "decide_stage1", "decide_stage", "selector_for_stage"]


@dataclass(frozen=True)
class Stage1Decision:
    """Stage 1 (before layer 0) for one video laid out as ``(T, P, D)``.

    Attributes:
        keep: ``(T, P)`` bool, the tokens that stay (run anchors).
        kept_index: ``(N_kept,)`` int64 flat index ``t * P + p`` of each kept token, in sequence order.
        anchor_frame: ``(T, P)`` int64 frame of the anchor each token is merged into (its own if kept).
        features: ``(N_kept, D)`` the kept tokens in sequence order, merged runs averaged in.
        frame_segment: ``(T,)`` int64 segment id of each frame.
        token_segment: ``(T, P)`` int64 segment id of each token (a merged token keeps its anchor's).
        z: ``(M,)`` float32 segment scores (Eq. 4), reused at every later stage.
        num_segments: M.
    """

    keep: torch.Tensor
    kept_index: torch.Tensor
    anchor_frame: torch.Tensor
    features: torch.Tensor
    frame_segment: torch.Tensor
    token_segment: torch.Tensor
    z: torch.Tensor

    @property
    def num_segments(self) -> int:
        return int(self.z.numel())

    @property
    def num_kept(self) -> int:
        return self.kept_index.numel()


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
    merged = temporal_run_merge(x, merge_mask, validate=False)  # merge_set never selects frame 0
    return Stage1Decision(
        keep=merged.keep,
        kept_index=merged.kept_index,
        anchor_frame=merged.anchor_frame,
        features=merged.features,
        frame_segment=frame_segment,
        token_segment=frame_segment[merged.anchor_frame],
        z=z,
    )


def selector_for_stage(stage: int, config: HieraVidConfig, ratios: Sequence[float]) -> str:
    """Which selector runs at in-LLM stage ``stage`` (2..S) of the schedule ``ratios``: ``dpp``, or ``bins``
    at the first in-LLM stage that prunes (stage 2, unless its ratio is 0 and it is skipped) when the
    config asks for the relevance-bins variant."""
    if not 2 <= stage <= len(ratios):
        raise ValueError(f"in-LLM stages are numbered from 2 to {len(ratios)}, got stage={stage}")
    first = next((k for k in range(2, len(ratios) + 1) if ratios[k - 1] > 0), None)
    return "bins" if config.in_llm_selector == "bins" and stage == first else "dpp"


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
    present = segment_sizes(segment, z.numel())  # (M,)
    k = keep_counts(
        present, z, ratio, delta=config.delta, clip=config.keep_clip, exact_total=config.exact_total
    )
    if selector == "bins":
        return segment_bin_select(relevance, segment, k)
    return segment_dpp_select(hidden, relevance, segment, k, backend=config.greedy_backend, present=present,
                              rank_floor=config.dpp_rank_floor)


def check_reachable(ratios: tuple[float, ...], config: HieraVidConfig) -> None:
    """Warn about in-LLM stage ratios that Eq. 5's clip cannot follow: the keep rate of every segment is
    at least ``keep_clip[0]``, where ``R_k > 1 - keep_clip[0]`` asks for less, so the stage's counts drift
    from the schedule (``exact_total`` trims them to the stage total, so it reaches any ratio). A
    warning, not an error: the solver's own schedules ask for such ratios with many stages at low
    budgets (S = 8, B = 0.05), which run; there, the floors of small segments' counts often keep fewer
    tokens than the schedule, not more."""
    if config.exact_total:
        return
    low = config.keep_clip[0]
    for stage, ratio in enumerate(ratios[1:], start=2):
        if ratio > 1.0 - low + 1e-9:
            warnings.warn(
                f"HieraVid's stage {stage} prunes R_{stage}={ratio:g} of every segment, but "
                f"keep_clip={config.keep_clip} sets every segment's keep rate to at least {low:g} (Eq. 5), so the "
                f"stage's token counts drift from the schedule: lower keep_clip's first value to <= {1.0 - ratio:g}, "
                "use fewer stages or a lower ratio, or pass exact_total=True",
                HieravidWarning, stacklevel=3,
            )
            return


class HieraVid(PruningMethod):
    """HieraVid as a runtime method: stage 1 before layer 0, in-LLM stages at the schedule's layers.

    In-LLM stages run at the input of their first layer (before its attention), using that layer's own
    query/key projections for relevance (Eq. 8) and its input hidden states as DPP features (Eq. 9); the
    reference code prunes inside the layer after its attention block. Both placements are allowed by the
    specification (Eq. 11); the FLOPs accounting charges the stage at the layer input either way.
    """

    def __init__(self, config: HieraVidConfig | None = None) -> None:
        self.name = "hieravid"
        self.config = config or HieraVidConfig()

    def prepare(self, device: torch.device) -> None:
        prepare_greedy(self.config.greedy_backend, device)  # the in-LLM stages' DPP

    def schedule(self, num_layers: int) -> Schedule:
        """The stage schedule for a decoder of ``num_layers`` layers."""
        if self.config.ratios is not None:
            return Schedule(self.config.ratios, num_layers)
        return solve_schedule(
            self.config.budget, num_layers, self.config.num_stages, min_stage_ratio=self.config.min_stage_ratio
        )

    def decision_layers(self, num_layers: int) -> list[int]:
        """Stage 1 (layer 0) and every in-LLM stage whose ratio is above 0. A stage with ratio 0 is not
        run at all: Eq. 5's clip would still drop 5% of each segment. Stage 1 always runs when a later
        stage does (it finds the segments), even with rho = 0; budget 1 runs nothing."""
        schedule = self.schedule(num_layers)
        if not any(schedule.ratios):
            return []
        check_reachable(schedule.ratios, self.config)
        return [0] + [layer for layer, r in zip(schedule.boundaries[1:], schedule.ratios[1:]) if r > 0]

    def expected_tokens_per_layer(self, num_visual: int, num_layers: int) -> list[int] | None:
        return self.schedule(num_layers).tokens_per_layer(num_visual)

    def query_rows(self, tokens: VideoTokens) -> int:
        """Query rows whose attention gives the relevance (Eq. 8): 1 (``last``), or ``query_tokens`` of the
        trailing instruction tokens (``mean``), never more than the instruction has: never the video's."""
        if self.config.relevance_query != "mean":
            return 1
        rows = self.config.query_tokens
        if tokens.instruction is not None:
            rows = max(1, min(rows, int(tokens.instruction.shape[0])))
        return rows

    def decide(self, layer: int, tokens: VideoTokens, state: dict) -> Decision:
        if "schedule" not in state:
            state["schedule"] = self.schedule(state["num_layers"])
        schedule: Schedule = state["schedule"]
        stage = schedule.boundaries.index(layer) + 1
        ratio = schedule.ratios[stage - 1]
        if stage == 1:
            x = tokens.grid("HieraVid's stage 1")  # (T, P, D)
            warn_if_merge_is_capped(tokens.num_frames, tokens.num_slots, ratio, self.name)
            first = decide_stage1(x, ratio, self.config)
            keep = first.keep.reshape(-1)
            slot = torch.arange(tokens.num_slots, device=x.device)
            merge_into = (first.anchor_frame * tokens.num_slots + slot).reshape(-1)
            state["segment"] = first.token_segment.reshape(-1)[first.kept_index]
            state["z"] = first.z
            state["num_segments"] = first.num_segments
            return Decision(
                keep=keep, merge_into=merge_into, features=first.features,
                segment=first.frame_segment.repeat_interleave(tokens.num_slots),  # (T*P,) each token's own frame's
                frame_segment=first.frame_segment, stage=1,
            )
        if tokens.relevance_from_attention is None:
            raise ValueError(f"HieraVid's stage {stage} needs attention relevance at layer {layer}")
        sign = -1.0 if self.config.relevance_sign == "negative" else 1.0
        attention = tokens.relevance_from_attention(query_rows=self.query_rows(tokens))  # (N,)
        r = minmax_normalize(sign * attention, self.config.eps)
        keep = decide_stage(
            tokens.features, r, state["segment"], state["z"], ratio, self.config,
            selector_for_stage(stage, self.config, schedule.ratios),
        )
        segment = state["segment"]
        state["segment"] = segment[keep]
        return Decision(keep=keep, scores=r, segment=segment, stage=stage)
