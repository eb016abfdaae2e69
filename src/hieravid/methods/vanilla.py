"""The baseline: the same runtime machinery, nothing pruned."""

from __future__ import annotations

from hieravid.methods.base import Decision, PruningMethod, VideoTokens

__all__ = ["Vanilla"]


class Vanilla(PruningMethod):
    """Keeps every token; it has no decision points, so the runtime only records statistics."""

    def __init__(self) -> None:
        self.name = "vanilla"

    def decision_layers(self, num_layers: int) -> list[int]:
        return []

    def expected_tokens_per_layer(self, num_visual: int, num_layers: int) -> list[int] | None:
        return [num_visual] * num_layers

    def decide(self, layer: int, tokens: VideoTokens, state: dict) -> Decision:  # pragma: no cover
        raise RuntimeError("vanilla never decides")
