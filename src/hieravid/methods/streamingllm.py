"""StreamingLLM (Xiao et al., ICLR 2024, "Efficient Streaming Language Models with Attention Sinks")
adapted to visual-token pruning: attention sinks plus a recent window, over the visual tokens.

The original keeps, while it streams, the KV entries of the first few tokens of the sequence (the
"attention sinks", 4 in the paper) and of a sliding window of the most recent tokens, evicting the
rest. This project's adaptation (the "sink + recent window over the visual tokens" baseline named in
the project's issue) applies that rule once, to the visual tokens, before the LLM (layer 0): the first
``sinks`` visual tokens in sequence order stay, and so do the most recent ones, a window at the end of
the video (its latest frames), sized so the kept fraction equals the budget. Text is never pruned (the
sequence's own first tokens, the original sinks, are the system prompt and stay anyway).

Budget rule: pruning before layer 0 gives every layer the same kept fraction, so f = B and the kept
count is ``keep_count(B, N)`` (:mod:`hieravid.methods.budget`). When that count is at most ``sinks``,
only the first ``count`` tokens stay. Nothing is ranked: the method needs no attention and no
instruction, and its choice depends on positions alone.
"""

from __future__ import annotations

from typing import Any

import torch

from hieravid.config import check_budget, is_integer
from hieravid.methods.base import Decision, PruningMethod, VideoTokens, check_options
from hieravid.methods.budget import keep_count

__all__ = ["StreamingLLM", "create_streamingllm", "sink_window_mask"]

#: The paper's number of attention-sink tokens.
DEFAULT_SINKS = 4


def sink_window_mask(num_tokens: int, kept: int, sinks: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(N,)`` bool mask: the first ``min(sinks, kept)`` tokens and the last ``kept - min(sinks, kept)``.

    Args:
        num_tokens: N, tokens in sequence order.
        kept: tokens to keep, ``0 <= kept <= N``.
        sinks: leading tokens always kept first (attention sinks), >= 0.
    """
    if not 0 <= kept <= num_tokens:
        raise ValueError(f"kept must be in [0, {num_tokens}], got {kept}")
    head = min(sinks, kept)
    keep = torch.zeros(num_tokens, dtype=torch.bool, device=device)
    keep[:head] = True
    keep[num_tokens - (kept - head):] = True
    return keep


class StreamingLLM(PruningMethod):
    """Attention sinks + recent window over the visual tokens, at layer 0.

    Args:
        budget: relative token budget B in (0, 1]; the kept fraction at every layer.
        sinks: leading visual tokens always kept (default 4, the paper's), >= 0.
    """

    def __init__(self, budget: float = 0.3, sinks: int = DEFAULT_SINKS) -> None:
        self.name = "streamingllm"
        self.budget = check_budget(budget)
        if not is_integer(sinks) or sinks < 0:
            raise ValueError(f"sinks (attention-sink tokens) must be an integer >= 0, got {sinks!r}; the paper uses 4")
        self.sinks = int(sinks)

    def decision_layers(self, num_layers: int) -> list[int]:
        """``[0]``, or nothing at budget 1."""
        return [0] if self.budget < 1.0 else []

    def expected_tokens_per_layer(self, num_visual: int, num_layers: int) -> list[int]:
        return [keep_count(self.budget, num_visual)] * num_layers

    def decide(self, layer: int, tokens: VideoTokens, state: dict) -> Decision:
        kept = keep_count(self.budget, tokens.num_tokens)
        return Decision(keep=sink_window_mask(tokens.num_tokens, kept, self.sinks, tokens.features.device))


def create_streamingllm(budget: float, **options: Any) -> PruningMethod:
    """Registry factory: ``StreamingLLM(budget, **options)``; options: ``sinks`` (default 4)."""
    check_options("streamingllm", options, {"sinks"})
    return StreamingLLM(budget, **options)
