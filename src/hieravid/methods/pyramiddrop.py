"""PyramidDrop (Xing et al., CVPR 2025, "PyramidDrop: Accelerating Your Large Vision-Language Models
via Pyramid Visual Redundancy Reduction"): progressive pruning at the ends of S equal LLM stages.

The decoder's L layers are cut into S stages starting at layers ``round(k L / S)`` (the same split as
HieraVid's, :func:`hieravid.schedule.stage_boundaries`). At the end of every stage but the last, i.e.
at the input of the first layer of stages 2..S, the visual tokens still present are ranked by the
attention the last instruction token pays them (averaged over heads;
``VideoTokens.relevance_from_attention(query_rows=1)``, computed from that layer's own projections)
and a ratio lambda of them stays. The paper's lambda = 0.5 keeps 1, 1/2, 1/4, 1/8 of the tokens in the
four stages: a relative budget of 0.469.

Budget rule: with stage widths w_k, stage 1 keeping ``f_0`` (``first_stage_keep``, 1 in the paper) and
stage k keeping ``f_0 lambda^(k-1)``, the relative token budget is
``B(lambda) = f_0 * sum_k w_k lambda^(k-1) / L``, increasing in lambda. lambda is solved by bisection so
that ``B(lambda) = B``. It reaches at least ``f_0 w_1 / L`` (lambda -> 0: stage 1 alone; 0.25 for
S = 4 and L = 28) and at most ``f_0``; a budget outside is refused with a ``ValueError`` naming the
bound and the option to change.

``first_stage_keep`` (a switch of this project, not the paper's): keep only that fraction before
layer 0, which lowers the reachable budget. Layer 0 has no attention yet, so those tokens are ranked
by their cosine similarity to the instruction's input embeddings (the mean over the instruction's
tokens, :func:`hieravid.ops.ranking.instruction_similarity`), highest kept: the instruction-relevance
of CDPruner in PyramidDrop's "keep what the instruction looks at" direction. Without instruction
tokens (``VideoTokens.instruction``), tokens evenly spaced over the sequence stay.

``lambda_`` overrides the solved ratio; the budget argument is then ignored and
:meth:`PyramidDrop.achieved_budget` reports the realised one. Per-stage integer counts follow
:func:`hieravid.methods.budget.keep_count` of the tokens present, so they may sit a token above the
nominal fractions.

Positions: kept tokens keep their original ones, as the runtime gives every method; the public code
renumbers the tokens 0, 1, 2, ... after each drop, so from stage 2 on its rotary positions, and with them
the attention that ranks the next drop, differ from these.
"""

from __future__ import annotations

from typing import Any

import torch

from hieravid.config import check_budget, is_integer, is_number
from hieravid.methods.base import Decision, PruningMethod, VideoTokens, check_options
from hieravid.methods.budget import keep_count, layer_average
from hieravid.ops.ranking import instruction_similarity, top_k_mask
from hieravid.schedule import stage_boundaries

__all__ = ["PyramidDrop", "create_pyramiddrop", "evenly_spaced", "solve_lambda"]

#: The paper's number of stages and per-stage keep ratio.
DEFAULT_STAGES = 4
PAPER_LAMBDA = 0.5
_BISECTION_STEPS = 200
#: Budgets this close to a bound count as on it (float round-off of ``f_0 w_1 / L``).
_TOLERANCE = 1e-12


def _check_depth(num_layers: int, num_stages: int) -> None:
    """Refuse more stages than decoder layers, naming PyramidDrop's own option (``stages``)."""
    if is_integer(num_layers) and is_integer(num_stages) and 1 <= num_layers < num_stages:
        raise ValueError(
            f"PyramidDrop's {num_stages} stages need at least {num_stages} decoder layers, and the model has "
            f"{num_layers} decoder layers: every stage needs one; pass stages={num_layers} or fewer"
        )


def _stage_widths(num_layers: int, num_stages: int) -> list[int]:
    _check_depth(num_layers, num_stages)
    starts = stage_boundaries(num_layers, num_stages)
    return [end - start for start, end in zip(starts, starts[1:] + [num_layers])]


def _budget_of(lam: float, first_keep: float, widths: list[int]) -> float:
    """Layer-weighted kept fraction of the nominal schedule ``f_0 lambda^(k-1)``."""
    return first_keep * sum(w * lam**k for k, w in enumerate(widths)) / sum(widths)


def solve_lambda(
    budget: float, num_layers: int, num_stages: int = DEFAULT_STAGES, first_stage_keep: float = 1.0
) -> float:
    """The per-stage keep ratio lambda in [0, 1] whose layer-average kept fraction equals ``budget``.

    Raises a ``ValueError`` when ``budget < first_stage_keep * w_1 / L`` (even lambda = 0 keeps stage 1
    whole) or ``budget > first_stage_keep`` (even lambda = 1 prunes at layer 0).
    """
    budget = check_budget(budget)
    widths = _stage_widths(num_layers, num_stages)
    lowest, highest = _budget_of(0.0, first_stage_keep, widths), first_stage_keep
    if budget < lowest - _TOLERANCE:
        ways = [f"budget >= {lowest:.4f}"]
        if widths[0] > 1:  # more stages help only by making the first one shorter
            ways.append("more stages")
        ways.append("a smaller first_stage_keep (prunes before layer 0)")
        raise ValueError(
            f"PyramidDrop cannot reach budget {budget:g} with {num_stages} stages over {num_layers} layers: "
            f"its first stage ({widths[0]} layers) keeps {first_stage_keep:g} of the visual tokens, so the smallest "
            f"reachable budget is {lowest:.4f}; use {', '.join(ways[:-1])} or {ways[-1]}"
        )
    if budget > highest + _TOLERANCE:
        raise ValueError(
            f"PyramidDrop cannot reach budget {budget:g} with first_stage_keep={first_stage_keep:g}: layer 0 "
            f"already keeps only {first_stage_keep:g}; raise first_stage_keep to at least {budget:g}"
        )
    if num_stages == 1 or budget >= highest:
        return 1.0
    if budget <= lowest:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _budget_of(mid, first_stage_keep, widths) < budget:
            lo = mid
        else:
            hi = mid
    return min((lo, hi), key=lambda lam: abs(_budget_of(lam, first_stage_keep, widths) - budget))


class PyramidDrop(PruningMethod):
    """PyramidDrop at relative budget ``budget``.

    Args:
        budget: relative token budget B in (0, 1]; ignored when ``lambda_`` is given.
        stages: S, equal stages of the decoder (default 4, the paper's).
        lambda_: per-stage keep ratio in [0, 1]; overrides the budget-solved value (paper: 0.5).
        first_stage_keep: fraction in (0, 1] kept before layer 0 (default 1: the paper prunes nothing there).
    """

    def __init__(
        self,
        budget: float = 0.3,
        stages: int = DEFAULT_STAGES,
        lambda_: float | None = None,
        first_stage_keep: float = 1.0,
    ) -> None:
        self.name = "pyramiddrop"
        self.budget = check_budget(budget)
        if not is_integer(stages) or stages < 1:
            raise ValueError(f"stages must be an integer >= 1, got {stages!r}; the paper uses stages=4")
        self.stages = int(stages)
        if lambda_ is not None and (
            not is_number(lambda_) or not 0.0 <= lambda_ <= 1.0
        ):
            raise ValueError(f"lambda_ (kept ratio per stage) must be in [0, 1], got {lambda_!r}; the paper uses 0.5")
        self.lambda_ = None if lambda_ is None else float(lambda_)
        if not is_number(first_stage_keep) or not 0.0 < float(first_stage_keep) <= 1.0:
            raise ValueError(
                f"first_stage_keep must be the fraction of the visual tokens kept before layer 0, in (0, 1], got "
                f"{first_stage_keep!r}; 1 (the paper's) prunes nothing there"
            )
        self.first_stage_keep = float(first_stage_keep)

    def keep_ratio(self, num_layers: int) -> float:
        """lambda for a decoder of ``num_layers`` layers (``lambda_`` if given, else solved from B)."""
        if self.lambda_ is not None:
            _stage_widths(num_layers, self.stages)  # validates stages <= L
            return self.lambda_
        return solve_lambda(self.budget, num_layers, self.stages, self.first_stage_keep)

    def kept_fractions(self, num_layers: int) -> list[float]:
        """Nominal kept fraction of the original visual tokens in each stage: ``f_0 lambda^(k-1)``."""
        lam = self.keep_ratio(num_layers)
        return [self.first_stage_keep * lam**k for k in range(self.stages)]

    def achieved_budget(self, num_layers: int) -> float:
        """Layer-average of the nominal kept fractions (equals B unless ``lambda_`` is given)."""
        widths = _stage_widths(num_layers, self.stages)
        return layer_average([f for w, f in zip(widths, self.kept_fractions(num_layers)) for _ in range(w)])

    def decision_layers(self, num_layers: int) -> list[int]:
        """Layer 0 when ``first_stage_keep < 1``, and the first layer of stages 2..S when lambda < 1."""
        layers = [0] if self.first_stage_keep < 1.0 else []
        if self.keep_ratio(num_layers) < 1.0:
            layers += stage_boundaries(num_layers, self.stages)[1:]
        return layers

    def expected_tokens_per_layer(self, num_visual: int, num_layers: int) -> list[int]:
        lam = self.keep_ratio(num_layers)
        count = keep_count(self.first_stage_keep, num_visual)
        out: list[int] = []
        for k, width in enumerate(_stage_widths(num_layers, self.stages)):
            if k > 0 and lam < 1.0:
                count = keep_count(lam, count)
            out.extend([count] * width)
        return out

    def decide(self, layer: int, tokens: VideoTokens, state: dict) -> Decision:
        if layer == 0:
            kept = keep_count(self.first_stage_keep, tokens.num_tokens)
            similarity = instruction_similarity(tokens.features, tokens.instruction)  # (N,) or None
            if similarity is None:  # no instruction after the video: spread the kept tokens over it
                return Decision(keep=evenly_spaced(tokens.num_tokens, kept, tokens.features.device))
            return Decision(keep=top_k_mask(similarity, kept))
        if tokens.relevance_from_attention is None:
            raise ValueError(f"PyramidDrop needs attention at layer {layer}; the runtime gave none")
        if "lambda" not in state:
            state["lambda"] = self.keep_ratio(state["num_layers"])
        attention = tokens.relevance_from_attention(query_rows=1)  # (N,) mean over heads
        return Decision(keep=top_k_mask(attention, keep_count(state["lambda"], tokens.num_tokens)))


def evenly_spaced(num_tokens: int, kept: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(N,)`` bool mask of ``kept`` tokens spread evenly over the sequence: indices ``floor(i N / kept)``."""
    keep = torch.zeros(num_tokens, dtype=torch.bool, device=device)
    keep[torch.div(torch.arange(kept, device=device) * num_tokens, max(kept, 1), rounding_mode="floor")] = True
    return keep


def create_pyramiddrop(budget: float, **options: Any) -> PruningMethod:
    """Registry factory: ``PyramidDrop(budget, **options)``; options: ``stages``, ``lambda_``,
    ``first_stage_keep``."""
    allowed = {"stages", "lambda_", "first_stage_keep"}
    check_options("pyramiddrop", options, allowed)
    return PyramidDrop(budget, **options)
