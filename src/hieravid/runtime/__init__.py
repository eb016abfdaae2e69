"""The runtime: applies a method's decisions to a decoder (hidden states, positions, masks, caches)."""

from hieravid.runtime.cache import PrunedCache
from hieravid.runtime.engine import Runtime
from hieravid.runtime.stats import FlopsCount, PruneStats

__all__ = ["FlopsCount", "PruneStats", "PrunedCache", "Runtime"]
