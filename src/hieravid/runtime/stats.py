"""Statistics of one pruned prefill."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hieravid.flops import ModelShape, exact_flops, paper_flops

__all__ = ["PruneStats", "FlopsCount"]


@dataclass(frozen=True)
class FlopsCount:
    """Prefill FLOPs of the batch: the paper's convention (Eq. 12, visual tokens only) and the exact
    matmul count (text tokens, GQA, SwiGLU, the LM head over the positions the call asked logits for),
    pruned and unpruned. A batch counts as its samples run one by one, without padding (a padded batch
    also multiplies its padding columns, and its SDPA calls get an explicit mask: dense products)."""

    paper: float
    exact: float
    vanilla_paper: float
    vanilla_exact: float

    @property
    def ratio(self) -> float:
        return self.paper / self.vanilla_paper if self.vanilla_paper else 1.0

    @property
    def exact_ratio(self) -> float:
        return self.exact / self.vanilla_exact if self.vanilla_exact else 1.0


@dataclass
class PruneStats:
    """What the last prefill did.

    Attributes:
        method: the method's name.
        per_sample_tokens_per_layer: for each sample, visual tokens entering each decoder layer.
        visual_tokens: for each sample, visual tokens before any pruning (the video's tokens).
        text_tokens: for each sample, non-padding tokens that are not pruned visual tokens (text, the
            newline of LLaVA-OneVision, ...).
        per_sample_segments: segments found per sample (None where the method has no segments or the
            sample has no video).
        flops: the batch's prefill FLOPs.
        decide_seconds_by_layer: wall time spent deciding (relevance, scoring, selection) at each decision
            point, in seconds, keyed by the index of the layer the decision ran before (0: before the LLM).
        kept_positions: for each layer, for each sample, the original sequence positions present (empty
            when nothing was pruned: every position is present).
        pruned: False when nothing could be pruned (no video in the input, or a call continuing a cache that
            already holds tokens): a pass-through, every layer seeing every token.
    """

    method: str
    per_sample_tokens_per_layer: list[list[int]]
    visual_tokens: list[int]
    text_tokens: list[int]
    per_sample_segments: list[int | None]
    flops: FlopsCount
    decide_seconds_by_layer: dict[int, float]
    kept_positions: list[list[torch.Tensor]] = field(repr=False)
    pruned: bool = True

    @property
    def decide_seconds(self) -> float:
        """Wall time spent deciding, all decision points together, in seconds."""
        return sum(self.decide_seconds_by_layer.values())

    @property
    def tokens_per_layer(self) -> list[int]:
        """Visual tokens entering each decoder layer, summed over the batch."""
        return [sum(col) for col in zip(*self.per_sample_tokens_per_layer)]

    @property
    def num_segments(self) -> int:
        """Segments found, summed over the batch's samples."""
        return sum(s or 0 for s in self.per_sample_segments)

    @property
    def flops_ratio(self) -> float:
        """Pruned / unpruned prefill FLOPs, paper convention."""
        return self.flops.ratio

    @property
    def achieved_budget(self) -> float:
        """Kept visual fraction averaged over layers and samples (the relative token budget reached)."""
        full = sum(n * len(rows) for n, rows in zip(self.visual_tokens, self.per_sample_tokens_per_layer))
        kept = sum(sum(rows) for rows in self.per_sample_tokens_per_layer)
        return kept / full if full else 1.0


def lm_head_positions(logits_to_keep: int | torch.Tensor | None, positions: int) -> int:
    """Positions the LM head runs on for a sample of ``positions`` tokens out of the last layer:
    ``logits_to_keep`` as the model's ``forward`` takes it (0: all of them, k: the last k, a tensor: the
    positions it lists), None when the call computes no logits (the multimodal model called alone)."""
    if logits_to_keep is None:
        return 0
    if isinstance(logits_to_keep, torch.Tensor):
        return logits_to_keep.numel()  # indices (a 0-d one selects one position)
    return min(int(logits_to_keep), positions) if logits_to_keep else positions


def count_flops(
    shape: ModelShape,
    per_sample_tokens: list[list[int]],
    text_tokens: list[int],
    original_visual: list[int],
    *,
    logits_to_keep: int | torch.Tensor | None = 1,
    causal: bool = True,
    past_tokens: int = 0,
) -> FlopsCount:
    """FLOPs of a batch, sample by sample (attention is quadratic per sample), each sample's LM head over
    the positions ``logits_to_keep`` asks for (see :func:`lm_head_positions`); ``causal``: the causal
    attention pairs (SDPA) or the dense products (eager attention); ``past_tokens``: keys already in the
    cache the call continues, attended to by every query."""

    def exact(rows: list[int], text: int) -> float:  # rows: visual tokens per layer; the LM head reads the last
        return exact_flops(shape, rows, text, lm_head_tokens=lm_head_positions(logits_to_keep, rows[-1] + text),
                           causal=causal, past_tokens=past_tokens)

    paper = sum(paper_flops(rows, shape.hidden_size, shape.intermediate_size) for rows in per_sample_tokens)
    layers = shape.num_layers
    vanilla_paper = sum(paper_flops([n] * layers, shape.hidden_size, shape.intermediate_size) for n in original_visual)
    return FlopsCount(
        paper=paper,
        exact=sum(exact(rows, text) for rows, text in zip(per_sample_tokens, text_tokens)),
        vanilla_paper=vanilla_paper,
        vanilla_exact=sum(exact([n] * layers, text) for n, text in zip(original_visual, text_tokens)),
    )
