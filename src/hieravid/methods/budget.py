"""One budget meaning for every method: the relative token budget B, the kept visual fraction averaged
over the decoder layers (spec section 3). Each method maps B to its own parameters with these helpers,
so methods at the same B cost about the same.
"""

from __future__ import annotations

from hieravid.config import check_budget
from hieravid.schedule import floor_count

__all__ = ["keep_count", "keep_fraction_from_layer", "layer_average"]


def keep_count(fraction: float, num_tokens: int) -> int:
    """Tokens kept out of ``num_tokens`` at a kept ``fraction``: ``n - floor((1 - fraction) * n)``, the
    same rounding as HieraVid's stages (a stage removes ``floor(r * n)``; both floor the decimal product,
    :func:`hieravid.schedule.floor_count`)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    return num_tokens - floor_count((1.0 - fraction) * num_tokens)


def keep_fraction_from_layer(budget: float, num_layers: int, layer: int) -> float:
    """Kept fraction f for a method that keeps every visual token in layers ``[0, layer)`` and a fraction
    f in layers ``[layer, L)``: ``B = (layer + (L - layer) f) / L``, so ``f = (B L - layer) / (L - layer)``.

    ``layer = 0`` (pruning before the LLM) gives ``f = B``. Raises a ``ValueError`` naming the smallest
    budget reachable when ``B < layer / L`` (the unpruned early layers alone exceed the budget).
    """
    check_budget(budget)
    if not 0 <= layer < num_layers:
        raise ValueError(f"layer must be in [0, num_layers={num_layers}), got {layer}")
    fraction = (budget * num_layers - layer) / (num_layers - layer)
    if fraction < 0:
        raise ValueError(
            f"budget {budget:g} cannot be reached when pruning starts at layer {layer} of {num_layers}: "
            f"the layers before it alone cost {layer / num_layers:.3f}; use budget >= {layer / num_layers:.3f} "
            "or prune earlier"
        )
    return min(fraction, 1.0)


def layer_average(kept_fraction_per_layer: list[float]) -> float:
    """The relative token budget of a per-layer kept-fraction profile (its mean)."""
    return sum(kept_fraction_per_layer) / len(kept_fraction_per_layer)
