"""DivPrune (Alvar et al., CVPR 2025, "DivPrune: Diversity-based Visual Token Pruning for Large
Multimodal Models"): keep the subset of visual tokens that solves the Max-Min Diversity Problem
(MMDP) greedily, before the LLM.

The paper casts pruning as MMDP: pick K tokens maximising the smallest pairwise distance, with the
cosine distance ``d(i, j) = 1 - cos(x_i, x_j)`` of the tokens entering the LLM (the projected visual
features: the reference code prunes the input embeddings with ``LAYER_INDEX=0``). Its greedy solver
(the reference's ``DivPrune`` function), run here over ALL visual tokens of the video at once:

1. first pick: the token whose nearest neighbour is farthest, ``argmax_i min_{j != i} d(i, j)`` (the
   reference takes the second-smallest entry of each column of the distance matrix, the smallest
   being the token itself at distance 0);
2. every next pick: the token farthest from the picked set, ``argmax_i min_{s in S} d(i, s)``
   (farthest-point sampling);
3. the picks are returned in sequence order. Nothing is merged.

Ties go to the lowest index (``torch.argmax``). Picked tokens are excluded explicitly (-inf), so K
distinct tokens come back even when tokens repeat (the reference relies on a picked token's zero
distance to itself, which can re-pick a duplicate when every remaining distance is 0).

Cost: the K picks are inherently sequential: ONE Python loop over the picks, each a few O(N) tensor
operations (a row of distances, an element-wise minimum, an argmax) on the device, with no
host synchronisation. The N x N distance matrix is built once with one matrix product (O(N^2 D)), as
the reference does, when it has at most ``max_matrix_elements`` entries (2^28 = 1 GiB of float32 by
default: 16384 tokens); beyond that each pick computes its row on the fly (O(N D) per pick) and the
first pick's nearest-neighbour distances are computed in row blocks, so memory stays O(N D).
Distances are float32.

Budget rule: pruning before layer 0 keeps f = B (:func:`hieravid.methods.budget.keep_fraction_from_layer`
with layer 0), K = ``keep_count(B, N)`` exactly. The reference keeps ``round(ratio * N)`` tokens per
image with a default ratio 0.098; here the ratio is the budget.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from hieravid.config import check_budget, is_integer
from hieravid.methods.base import BeforeLLMMethod, Decision, PruningMethod, VideoTokens, check_options

__all__ = ["DivPrune", "create_divprune", "divprune_select"]

#: Largest distance matrix built in one piece (float32 entries); larger inputs stream their rows.
MAX_MATRIX_ELEMENTS = 2**28
# Row-block size (in matrix entries) when the nearest-neighbour distances are computed in blocks.
_BLOCK_ELEMENTS = 2**24


# Cosine distances below this are float32 round-off of identical directions: they count as 0, so ties
# between duplicate tokens go to the lowest index instead of to noise.
_DISTANCE_RESOLUTION = 1e-6


def _cosine_distance(dots: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` from dot products of unit vectors, with round-off below the resolution set to 0."""
    distance = 1.0 - dots
    return distance.masked_fill_(distance < _DISTANCE_RESOLUTION, 0.0)


def _nearest_neighbour_distance(unit: torch.Tensor) -> torch.Tensor:
    """``(N, D)`` unit vectors -> ``(N,)`` distance of each token to its nearest other token, in row
    blocks (memory O(block * N)); ``inf`` for a lone token."""
    n = unit.shape[0]
    rows = max(1, _BLOCK_ELEMENTS // max(n, 1))
    out = torch.empty(n, dtype=torch.float32, device=unit.device)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        block = _cosine_distance(unit[start:stop] @ unit.T)  # (b, N)
        local = torch.arange(stop - start, device=unit.device)
        block[local, local + start] = float("inf")
        out[start:stop] = block.min(dim=1).values
    return out


def divprune_select(features: torch.Tensor, k: int, *, max_matrix_elements: int = MAX_MATRIX_ELEMENTS) -> torch.Tensor:
    """DivPrune's greedy max-min selection of ``k`` of the ``N`` tokens.

    Args:
        features: ``(N, D)`` tokens (any float dtype; distances are float32).
        k: tokens to keep, ``0 <= k <= N``.
        max_matrix_elements: build the ``N x N`` distance matrix when ``N^2`` is at most this, else
            compute distance rows on the fly (same picks, less memory).

    Returns:
        ``(N,)`` bool mask with exactly ``k`` True, sequence order untouched.
    """
    n = features.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}] (the tokens present), got {k}")
    keep = torch.zeros(n, dtype=torch.bool, device=features.device)
    if k == 0:
        return keep
    if k == n:
        return keep.fill_(True)
    unit = F.normalize(features.float(), dim=-1)  # (N, D); a zero vector stays zero (distance 1)
    if n * n <= max_matrix_elements:
        distance = _cosine_distance(unit @ unit.T)  # (N, N)
        # The diagonal is never read again: a pick's own entry is masked right after it is picked.
        nearest = distance.fill_diagonal_(float("inf")).min(dim=1).values  # (N,)

        def row(j: torch.Tensor) -> torch.Tensor:
            return distance.index_select(0, j).squeeze(0)
    else:
        distance = None
        nearest = _nearest_neighbour_distance(unit)

        def row(j: torch.Tensor) -> torch.Tensor:
            return _cosine_distance(unit @ unit.index_select(0, j).squeeze(0))

    j = torch.argmax(nearest).reshape(1)  # first pick: the most isolated token
    keep.index_fill_(0, j, True)
    to_set = row(j).clone()  # (N,) distance of every token to the picked set
    to_set.masked_fill_(keep, float("-inf"))
    for _ in range(k - 1):  # inherently sequential; O(N) tensor ops per pick, no host sync
        j = torch.argmax(to_set).reshape(1)
        keep.index_fill_(0, j, True)
        to_set = torch.minimum(to_set, row(j))
        to_set.masked_fill_(keep, float("-inf"))
    return keep


class DivPrune(BeforeLLMMethod):
    """DivPrune at relative budget ``budget``: one decision before layer 0 keeping
    ``keep_count(B, N)`` of the video's N visual tokens by greedy max-min cosine diversity.

    Args:
        budget: relative token budget B in (0, 1]; the kept fraction at layer 0 is B itself.
        max_matrix_elements: see :func:`divprune_select` (memory switch only; the picks are the same).
    """

    def __init__(self, budget: float = 0.3, max_matrix_elements: int = MAX_MATRIX_ELEMENTS) -> None:
        self.name = "divprune"
        self.budget = check_budget(budget)
        if not is_integer(max_matrix_elements) or max_matrix_elements < 0:
            raise ValueError(f"max_matrix_elements must be an integer >= 0, got {max_matrix_elements!r}")
        self.max_matrix_elements = int(max_matrix_elements)

    def decide(self, layer: int, tokens: VideoTokens, state: dict) -> Decision:
        if layer != 0:
            raise ValueError(f"DivPrune decides before layer 0 only, was asked at layer {layer}")
        kept = self.kept_count(tokens, state)
        keep = divprune_select(tokens.features, kept, max_matrix_elements=self.max_matrix_elements)
        return Decision(keep=keep)


def create_divprune(budget: float, **options: Any) -> PruningMethod:
    """Registry factory: ``DivPrune(budget, **options)``; option: ``max_matrix_elements``."""
    check_options("divprune", options, {"max_matrix_elements"})
    return DivPrune(budget, **options)
