"""CDPruner (Zhang et al. 2025, "Beyond Attention or Similarity: Maximizing Conditional Diversity for
Token Pruning in MLLMs"): keep the visual tokens that maximise a conditional DPP, before the LLM.

CDPruner builds, over all visual tokens, the conditional kernel
``L~ = diag(r) X X^T diag(r)`` (X the L2-normalised visual features, r the instruction relevance)
and keeps the greedy MAP subset of size K (Chen et al. 2018's fast greedy inference), in sequence
order. Here it runs once, before layer 0, over ALL visual tokens of the video: one DPP, no segments,
no stages (the official LLaVA code, given frames as a batch of images, runs one DPP per frame with the
same count in each). The kernel and the greedy loop are HieraVid's own operations
(:func:`hieravid.ops.conditional_kernel`, :func:`hieravid.ops.greedy_map`) run on one group.

Relevance, following the official code (``llava/model/llava_arch.py``, ``encode_images``):

* ``s_j = mean_m cos(x_j, t_m)`` over the instruction's embeddings t_m;
* sign: the code NEGATES it (``relevance = (-relevance).mean(dim=-1)``), so a token LESS similar to
  the instruction gets a higher weight; ``relevance_sign="negative"`` (default) reproduces that,
  ``"positive"`` flips it;
* min-max over the video's tokens: ``r = (u - min u + 1e-6) / (max u - min u)``
  (:func:`hieravid.ops.minmax_normalize`; all ones when u is constant up to round-off);
* theta: the paper's optional trade-off ``r <- exp(alpha r)``, ``alpha = theta / (2 (1 - theta))``,
  is commented out in the official code (default off: ``theta=None``); ``theta`` in [0, 1) turns it on.

Adaptation: the official code embeds the image with CLIP's vision projection and the instruction
with CLIP's text encoder (sentence embeddings of 77-token chunks). The supported models have no
paired text tower wired to the runtime, so both sides are the LLM's input embeddings at layer 0:
``VideoTokens.features`` (the projected visual tokens, which are also CDPruner's X) and
``VideoTokens.instruction`` (the input embeddings of the text after the prompt's last image or video:
the question and the chat template's closing tokens), via
:func:`hieravid.ops.ranking.instruction_similarity`, which equals the mean of the per-token cosines.
Without instruction tokens r is uniform (a plain DPP).

Greedy MAP: the official loop divides by ``sqrt(d2)`` without a guard (NaN, then repeated picks,
once the residual variances reach zero). ``greedy_map`` instead treats a residual below its relative
rank floor (a fraction of the largest kernel diagonal, ``hieravid.ops.dpp._RANK_FLOOR``) as used-up
rank: such candidates get a zero update row and are ranked by their kernel diagonal ``r_j^2`` (their
relevance) rather than by round-off, so K distinct tokens always come back and round-off does not
decide the picks. This departs from the official picks wherever residuals fall below that floor:
tokens whose relevance is that small, and the late picks once the kept tokens span the features
(always when K exceeds the feature rank, e.g. K > D on a tiny test model). Ties go to the lowest
index (``torch.argmax``), as in the official loop.

Cost: the N x N kernel (float32) and the greedy loop over K picks (one Python loop; each pick a few
O(N) operations plus a blocked Cholesky update, see :func:`hieravid.ops.greedy_map`). Memory: the
kernel, which the greedy loop's Schur updates overwrite (one N x N float32 matrix, 630 MB at N = 12544 =
64 frames x 196; the loop's smaller compacted copies come after it), plus the temporaries of building it.

Budget rule: pruning before layer 0 keeps f = B (:func:`hieravid.methods.budget.keep_fraction_from_layer`
with layer 0), K = ``keep_count(B, N)`` exactly (the official code takes a token count).
"""

from __future__ import annotations

from typing import Any

import torch

from hieravid.config import check_budget, check_choice, is_number
from hieravid.methods.base import BeforeLLMMethod, Decision, PruningMethod, VideoTokens, check_options
from hieravid.ops import conditional_kernel, greedy_map, minmax_normalize, prepare_greedy
from hieravid.ops.ranking import instruction_similarity

__all__ = ["CDPruner", "cdpruner_relevance", "cdpruner_select", "create_cdpruner"]

#: The official code's epsilon in the min-max normalisation.
EPS = 1e-6


def cdpruner_relevance(
    features: torch.Tensor,
    instruction: torch.Tensor | None,
    *,
    sign: str = "negative",
    theta: float | None = None,
) -> torch.Tensor:
    """CDPruner's relevance r of each visual token (see the module docstring).

    Args:
        features: ``(N, D)`` visual tokens.
        instruction: ``(n_text, D)`` instruction embeddings in the same space, or ``None`` / empty.
        sign: ``"negative"`` (the official code) or ``"positive"``.
        theta: ``None`` (official default: r used as is) or theta in [0, 1) for ``exp(alpha r)``,
            divided by its largest value (the greedy picks do not depend on the kernel's scale).

    Returns:
        ``(N,)`` float32 relevance, positive (at most 1 with ``theta``; may round to 0 near theta 1).
    """
    check_choice(sign, "relevance_sign", ("negative", "positive"))
    similarity = instruction_similarity(features, instruction)  # (N,) mean cosine, or None
    if similarity is None:
        r = torch.ones(features.shape[0], dtype=torch.float32, device=features.device)
    else:
        r = minmax_normalize(-similarity if sign == "negative" else similarity, EPS)
    if theta is not None and r.numel():  # exp(alpha r) / exp(alpha max r): alpha reaches ~500 near theta 1
        r = torch.exp(theta / (2.0 * (1.0 - theta)) * (r - r.max()))
    return r


def cdpruner_select(features: torch.Tensor, relevance: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy MAP of the conditional DPP over all tokens: ``(N, D), (N,) -> (N,)`` bool mask with
    exactly ``k`` True, sequence order untouched."""
    n = features.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}] (the tokens present), got {k}")
    if k == n:
        return torch.ones(n, dtype=torch.bool, device=features.device)
    valid = torch.ones(1, n, dtype=torch.bool, device=features.device)
    kernel = conditional_kernel(features.unsqueeze(0), relevance.unsqueeze(0), valid)  # (1, N, N)
    k_group = torch.tensor([k], dtype=torch.long, device=features.device)
    return greedy_map(kernel, k_group, valid, scratch=True)[0]  # the kernel is ours: no (N, N) working copy


def _check_theta(theta: float | None) -> float | None:
    if theta is None:
        return None
    if not is_number(theta) or not 0.0 <= float(theta) < 1.0:
        raise ValueError(f"theta must be None (the official default) or a number in [0, 1), got {theta!r}")
    return float(theta)


class CDPruner(BeforeLLMMethod):
    """CDPruner at relative budget ``budget``: one conditional DPP over the whole video before layer 0,
    keeping ``keep_count(B, N)`` tokens.

    Args:
        budget: relative token budget B in (0, 1]; the kept fraction at layer 0 is B itself.
        relevance_sign: ``"negative"`` (official code) or ``"positive"``.
        theta: ``None`` (official default) or the paper's trade-off theta in [0, 1).
    """

    def __init__(self, budget: float = 0.3, relevance_sign: str = "negative", theta: float | None = None) -> None:
        self.name = "cdpruner"
        self.budget = check_budget(budget)
        self.relevance_sign = check_choice(relevance_sign, "relevance_sign", ("negative", "positive"))
        self.theta = _check_theta(theta)

    def prepare(self, device: torch.device) -> None:
        prepare_greedy("auto", device)

    def decide(self, layer: int, tokens: VideoTokens, state: dict) -> Decision:
        if layer != 0:
            raise ValueError(f"CDPruner decides before layer 0 only, was asked at layer {layer}")
        kept = self.kept_count(tokens, state)
        r = cdpruner_relevance(tokens.features, tokens.instruction, sign=self.relevance_sign, theta=self.theta)
        return Decision(keep=cdpruner_select(tokens.features, r, kept))


def create_cdpruner(budget: float, **options: Any) -> PruningMethod:
    """Registry factory: ``CDPruner(budget, **options)``; options: ``relevance_sign``, ``theta``."""
    allowed = {"relevance_sign", "theta"}
    check_options("cdpruner", options, allowed)
    return CDPruner(budget, **options)
