"""The runtime: applies a method's decisions to a decoder (hidden states, positions, masks, caches)."""

from hieravid.runtime.cache import PrunedCache
from hieravid.runtime.engine import Runtime, device_clock
from hieravid.runtime.stats import FlopsCount, PruneStats
from hieravid.runtime.trace import PruneTrace, SampleTrace, StageTrace

__all__ = [
    "FlopsCount",
    "PruneStats",
    "PruneTrace",
    "PrunedCache",
    "Runtime",
    "SampleTrace",
    "StageTrace",
    "device_clock",
]
