"""FastV (Chen et al., ECCV 2024, "An Image is Worth 1/2 Tokens After Layer 2"): one pruning point
inside the LLM, ranked by the attention the last prompt token pays to each visual token.

Layers ``[0, K)`` see every visual token. At layer K the visual tokens are ranked by the attention
they receive from the last prompt token, averaged over heads (the paper's rule), and only the top
fraction f stays for layers ``[K, L)``.

Budget rule: the relative token budget B is the kept visual fraction averaged over the L layers
(:mod:`hieravid.methods.budget`), so ``B = (K + (L - K) f) / L`` and
``f = keep_fraction_from_layer(B, L, K) = (B L - K) / (L - K)``. A budget below ``K / L`` cannot be
reached (the first K layers alone cost more): ``apply`` refuses it, naming the smallest reachable budget
(0.0714 for K = 2, L = 28) and the largest K that reaches it.

Ranking: by the attention of layer K - 1, the last layer that sees every token, as the original code
does (it reads that layer's weights through ``output_attentions``). Here the runtime recomputes that
layer's last-token row from its input, norm, query/key projections and rotary embedding
(:meth:`attention_layer`, ``VideoTokens.relevance_from_attention(query_rows=1)``), so no eager
attention is needed, and the pruning applies to layer K's input.
"""

from __future__ import annotations

from typing import Any

from hieravid.config import check_budget, is_integer
from hieravid.methods.base import Decision, PruningMethod, VideoTokens, check_options
from hieravid.methods.budget import keep_count, keep_fraction_from_layer
from hieravid.ops.ranking import top_k_mask

__all__ = ["FastV", "create_fastv"]

#: The paper's pruning layer K.
DEFAULT_K = 2


class FastV(PruningMethod):
    """FastV at relative budget ``budget`` pruning at layer ``k`` (default 2, the paper's K).

    Args:
        budget: relative token budget B in (0, 1] (kept visual fraction averaged over the layers).
        k: the layer whose input is pruned, >= 1 (layer 0 has no attention yet) and < L.
    """

    def __init__(self, budget: float = 0.3, k: int = DEFAULT_K) -> None:
        self.name = "fastv"
        self.budget = check_budget(budget)
        if not is_integer(k):
            raise ValueError(f"k (FastV's pruning layer) must be an integer, got {k!r}; the paper uses k=2")
        if k < 1:
            raise ValueError(
                f"k (FastV's pruning layer) must be >= 1, got {k!r}: layer 0 has no attention to rank by; the "
                "paper uses k=2"
            )
        self.k = int(k)

    def keep_fraction(self, num_layers: int) -> float:
        """Fraction f of the visual tokens kept in layers ``[k, L)`` (raises when B < k / L)."""
        if self.k >= num_layers:
            raise ValueError(f"k={self.k} must be below the decoder's {num_layers} layers; lower k")
        try:
            return keep_fraction_from_layer(self.budget, num_layers, self.k)
        except ValueError as err:
            latest = int(self.budget * num_layers + 1e-9)  # the largest k whose first layers fit in B
            fix = f"a smaller k, e.g. fastv:k={latest}" if latest >= 1 else "k=1 is the earliest FastV prunes"
            raise ValueError(f"fastv (k={self.k}): {err} ({fix})") from None

    def attention_layer(self, layer: int) -> int:
        """Layer K - 1: the tokens are ranked by the attention of the layer before the pruning."""
        return layer - 1

    def decision_layers(self, num_layers: int) -> list[int]:
        """``[k]``, or nothing when f = 1 (budget 1)."""
        return [self.k] if self.keep_fraction(num_layers) < 1.0 else []

    def expected_tokens_per_layer(self, num_visual: int, num_layers: int) -> list[int]:
        kept = keep_count(self.keep_fraction(num_layers), num_visual)
        return [num_visual] * self.k + [kept] * (num_layers - self.k)

    def decide(self, layer: int, tokens: VideoTokens, state: dict) -> Decision:
        if tokens.relevance_from_attention is None:
            raise ValueError(f"FastV needs attention at layer {layer}; the runtime gave none")
        attention = tokens.relevance_from_attention(query_rows=1)  # (N,) mean over heads
        kept = keep_count(self.keep_fraction(state["num_layers"]), tokens.num_tokens)
        return Decision(keep=top_k_mask(attention, kept))


def create_fastv(budget: float, **options: Any) -> PruningMethod:
    """Registry factory: ``FastV(budget, **options)``; options: ``k`` (pruning layer, default 2)."""
    check_options("fastv", options, {"k"})
    return FastV(budget, **options)
