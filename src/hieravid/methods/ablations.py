"""HieraVid's ablation variants (paper section 5 / spec section 5 "Ablations", LLaVA-Video at 30%:
full 60.7; without layer-level stages 60.1; without segmentation 59.3; DPP replaced by FastV-style
attention top-k 48.3). Each is a registry factory ``create_<variant>(budget, **options)`` whose options
are the fields of :class:`hieravid.HieraVidConfig` (plus the variant's own, listed below).

- ``hieravid_no_seg``: ``segmentation="none"``: the whole video is one segment (z = 0), so Eq. 5 keeps
  the same rate everywhere and the DPP runs over the whole video. A config switch only.
- ``hieravid_topk``: the in-LLM selector (Eq. 9-10) is replaced by a top-k inside each segment: each
  segment keeps its Eq. 5 count ``k_i`` of the tokens with the HIGHEST attention a of the query
  (FastV's ranking). Stage 1 and the schedule are HieraVid's. Option ``topk_by``: ``attention``
  (default, a itself) or ``relevance`` (Eq. 8's r after the configured sign: with the reference's
  negative sign that keeps the LEAST attended tokens, the reading under which a top-k without the
  DPP's diversity term would fall as far as the paper's 48.3; offered to test that reading). The DPP's
  options (``in_llm_selector``, ``greedy_backend``, ``dpp_rank_floor``) are refused, as is
  ``relevance_sign`` with ``topk_by="attention"``: it never reads them.
- ``hieravid_no_layer``: without the layer-level stages, everything happens before the LLM (layer 0):
  the stage-1 merge with the schedule's rho (rho = 1 - B when ``B > 1 - rho``: merge only down to B),
  then, still at layer 0, conditional DPP inside each segment (Eq. 9-10, per-segment counts of Eq. 5)
  down to ``keep_count(B, N)`` tokens, the kept fraction for which the layer average equals B (Eq. 5
  floors each segment's count, so a few tokens fewer may stay, more so with many small segments;
  ``exact_total=True`` tops the counts up to exactly that many).
  Layer 0 has no attention, so the relevance r is CDPruner's instruction relevance: the mean cosine
  similarity of each (merged) visual token to the instruction's tokens (the text after the prompt's
  last image or video, ``VideoTokens.instruction``, at the input embeddings), ``Norm(-s)`` with the
  config's ``relevance_sign="negative"`` (CDPruner's own code and Eq. 8's default) or ``Norm(s)`` with
  ``"positive"``; all ones without instruction tokens.
  Options that concern attention (``relevance_query``, ``query_tokens``, ``in_llm_selector``) are
  refused: it never reads them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from hieravid.config import HieraVidConfig, check_choice
from hieravid.methods.base import Decision, PruningMethod, VideoTokens, check_options
from hieravid.methods.budget import keep_count
from hieravid.methods.hieravid import HieraVid, decide_stage1
from hieravid.ops import keep_counts, minmax_normalize, segment_dpp_select, segment_sizes
from hieravid.ops.ranking import instruction_similarity, segment_top_k
from hieravid.schedule import Schedule, pruned_count

__all__ = [
    "HieraVidNoLayer",
    "HieraVidTopK",
    "create_hieravid_no_layer",
    "create_hieravid_no_seg",
    "create_hieravid_topk",
]


def _config(
    variant: str,
    budget: float,
    options: dict[str, Any],
    fixed: dict[str, Any] | None = None,
    unused: tuple[tuple[str, ...], str] = ((), ""),
) -> HieraVidConfig:
    """A HieraVidConfig from ``options``, refusing unknown names, overrides of ``fixed`` fields and the
    config fields the variant never reads (``unused``: their names and why they are not read)."""
    check_options(variant, options, HieraVidConfig.option_names())
    names, why = unused
    given = [name for name in names if name in options]
    if given:
        raise ValueError(f"method {variant!r} does not use {', '.join(given)}: {why}; leave them out")
    for name, value in (fixed or {}).items():
        if name in options and options[name] != value:
            raise ValueError(f"method {variant!r} fixes {name}={value!r}; got {name}={options[name]!r}")
    return HieraVidConfig(budget=budget, **{**options, **(fixed or {})})


# --------------------------------------------------------------------------------------- no segmentation


def create_hieravid_no_seg(budget: float, **options: Any) -> PruningMethod:
    """HieraVid with one segment for the whole video (``segmentation="none"``)."""
    method = HieraVid(_config("hieravid_no_seg", budget, options, {"segmentation": "none"}))
    method.name = "hieravid_no_seg"
    return method


# ------------------------------------------------------------------------------------------- top-k


class HieraVidTopK(HieraVid):
    """HieraVid whose in-LLM stages keep each segment's ``k_i`` (Eq. 5) most attended tokens instead
    of running the conditional DPP.

    Args:
        config: the HieraVid switches (schedule, segmentation, Eq. 5).
        topk_by: ``attention`` (rank by a, highest kept: FastV's rule) or ``relevance`` (rank by Eq. 8's
            r = Norm(sign * a), highest kept).
    """

    def __init__(self, config: HieraVidConfig | None = None, topk_by: str = "attention") -> None:
        super().__init__(config)
        self.name = "hieravid_topk"
        self.topk_by = check_choice(topk_by, "topk_by", ("attention", "relevance"))

    def prepare(self, device: torch.device) -> None:
        """Nothing: top-k runs no DPP."""

    def decide(self, layer: int, tokens: VideoTokens, state: dict) -> Decision:
        if layer == 0:
            return super().decide(layer, tokens, state)
        schedule: Schedule = state["schedule"]  # set by stage 1, which always runs first
        stage = schedule.boundaries.index(layer) + 1
        ratio = schedule.ratios[stage - 1]
        if tokens.relevance_from_attention is None:
            raise ValueError(f"hieravid_topk needs attention relevance at layer {layer}")
        score = tokens.relevance_from_attention(query_rows=self.query_rows(tokens))  # (N,) a
        if self.topk_by == "relevance":
            sign = -1.0 if self.config.relevance_sign == "negative" else 1.0
            score = minmax_normalize(sign * score, self.config.eps)
        segment = state["segment"]
        present = segment_sizes(segment, state["z"].numel())
        k = keep_counts(
            present, state["z"], ratio,
            delta=self.config.delta, clip=self.config.keep_clip, exact_total=self.config.exact_total,
        )
        keep = segment_top_k(score, segment, k)
        state["segment"] = segment[keep]
        shown = score if self.topk_by == "relevance" else minmax_normalize(score, self.config.eps)  # in [0, 1]
        return Decision(keep=keep, scores=shown, segment=segment, stage=stage)


def create_hieravid_topk(budget: float, **options: Any) -> PruningMethod:
    """HieraVid with FastV-style attention top-k inside each segment instead of the DPP; extra option
    ``topk_by`` (``attention`` default, or ``relevance``)."""
    topk_by = options.pop("topk_by", "attention")
    unused = ("in_llm_selector", "greedy_backend", "dpp_rank_floor")
    why = "its in-LLM stages run a top-k, no DPP"
    if topk_by == "attention":
        unused = unused + ("relevance_sign",)
        why += ", ranked by the attention itself (topk_by=relevance uses the sign)"
    return HieraVidTopK(_config("hieravid_topk", budget, options, unused=(unused, why)), topk_by=topk_by)


# ------------------------------------------------------------------------------------ no layer stages


def _ratio_for(present_total: int, target: int) -> float:
    """A pruning ratio R with ``n - floor(R n) == target`` for ``n = present_total`` (float-safe)."""
    if target >= present_total:
        return 0.0
    ratio = (present_total - target) / present_total
    while pruned_count(ratio, present_total) < present_total - target:
        ratio = math.nextafter(ratio, 1.0)
    while pruned_count(ratio, present_total) > present_total - target:
        ratio = math.nextafter(ratio, 0.0)
    return ratio


class HieraVidNoLayer(HieraVid):
    """HieraVid without the layer-level stages: merge, then segment-wise conditional DPP, both before
    layer 0, down to the kept fraction B in every layer (see the module docstring)."""

    def __init__(self, config: HieraVidConfig | None = None) -> None:
        super().__init__(config)
        self.name = "hieravid_no_layer"

    def merge_ratio(self, num_layers: int) -> float:
        """Stage-1 rho: the schedule's, or ``1 - B`` when ``B > 1 - rho`` (merging alone reaches B)."""
        rho = self.schedule(num_layers).ratios[0]
        return rho if self.config.budget <= 1.0 - rho else 1.0 - self.config.budget

    def decision_layers(self, num_layers: int) -> list[int]:
        """``[0]``, or nothing at budget 1. The schedule is solved here too (its rho is stage 1's), so a
        depth it cannot serve is refused before the first prefill."""
        self.schedule(num_layers)
        return [0] if self.config.budget < 1.0 else []

    def expected_tokens_per_layer(self, num_visual: int, num_layers: int) -> list[int] | None:
        """``keep_count(B, N)`` in every layer (exact with ``exact_total``; Eq. 5 may drift otherwise)."""
        return [keep_count(self.config.budget, num_visual)] * num_layers

    def decide(self, layer: int, tokens: VideoTokens, state: dict) -> Decision:
        if layer != 0:
            raise ValueError(f"hieravid_no_layer decides at layer 0 only, asked at layer {layer}")
        num_tokens = tokens.num_tokens
        x = tokens.grid("hieravid_no_layer")  # (T, P, D)
        first = decide_stage1(x, self.merge_ratio(state["num_layers"]), self.config)
        merged_keep = first.keep.reshape(-1)  # (N,)
        slot = torch.arange(tokens.num_slots, device=x.device)
        merge_into = (first.anchor_frame * tokens.num_slots + slot).reshape(-1)  # (N,)
        segment = first.token_segment.reshape(-1)[merged_keep]  # (N1,)
        state["z"], state["num_segments"] = first.z, first.num_segments

        target = keep_count(self.config.budget, num_tokens)
        ratio = _ratio_for(first.num_kept, target)
        if ratio == 0.0:  # merging alone reached the budget: Eq. 5's clip would still drop 5%
            state["segment"] = segment
            return Decision(
                keep=merged_keep, merge_into=merge_into, features=first.features, frame_segment=first.frame_segment
            )
        present = segment_sizes(segment, first.num_segments)
        k = keep_counts(
            present, first.z, ratio,
            delta=self.config.delta, clip=self.config.keep_clip, exact_total=self.config.exact_total,
        )
        similarity = instruction_similarity(first.features, tokens.instruction)  # (N1,) or None
        if similarity is None:
            relevance = torch.ones(first.num_kept, device=x.device)
        else:
            sign = -1.0 if self.config.relevance_sign == "negative" else 1.0
            relevance = minmax_normalize(sign * similarity, self.config.eps)
        backend = self.config.greedy_backend
        selected = segment_dpp_select(first.features, relevance, segment, k, backend=backend, present=present,
                                      rank_floor=self.config.dpp_rank_floor)  # (N1,)
        state["segment"] = segment[selected]

        keep = torch.zeros_like(merged_keep)
        keep[first.kept_index] = selected  # the anchors the DPP kept (kept_index: the anchors, in order)
        # Tokens merged into a dropped anchor are dropped with it, merged into nothing.
        # (A kept anchor's merge_into is already its own index.)
        merge_into = torch.where(keep[merge_into], merge_into, torch.full_like(merge_into, -1))
        return Decision(
            keep=keep, merge_into=merge_into, features=first.features[selected], frame_segment=first.frame_segment
        )


def create_hieravid_no_layer(budget: float, **options: Any) -> PruningMethod:
    """HieraVid with every reduction before layer 0 (merge + segment DPP), kept fraction B throughout."""
    unused = ("relevance_query", "query_tokens", "in_llm_selector")
    why = "it decides before the LLM only, with no attention"
    return HieraVidNoLayer(_config("hieravid_no_layer", budget, options, unused=(unused, why)))
