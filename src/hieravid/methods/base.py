"""The contract between a pruning method and the runtime.

A method decides, per sample, which visual tokens stay at each of its decision points; the runtime
gathers hidden states, positions, masks and caches accordingly. Decision point 0 is the LLM input
(the embeddings after the visual features are placed, before layer 0); decision point ``l > 0`` is the
input of decoder layer ``l``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch

from hieravid.methods.budget import keep_count, keep_fraction_from_layer

__all__ = ["VideoTokens", "Decision", "PruningMethod", "BeforeLLMMethod", "check_options"]


def check_options(method: str, options: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Refuse option names a method's factory does not take, naming the ones it does."""
    allowed = sorted(allowed)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        listed = ", ".join(unknown)
        raise ValueError(f"unknown option(s) for method {method!r}: {listed}; allowed: {', '.join(allowed)}")


@dataclass
class VideoTokens:
    """One sample's visual tokens still present at a decision point, in sequence order.

    Attributes:
        features: ``(N, D)`` hidden states entering the decision layer (the input embeddings at layer 0).
        frame: ``(N,)`` int64 frame of each token (0..T-1).
        slot: ``(N,)`` int64 slot of each token inside its frame (0..P-1).
        num_frames: T, frames of the video as the model sees them.
        num_slots: P, token slots per frame.
        relevance_from_attention: ``relevance_from_attention(query_rows=1)`` returns ``(N,)`` attention of
            the last ``query_rows`` prompt tokens to these tokens, averaged over heads and rows (softmax
            over all keys; Eq. 8's ``a`` before normalisation), computed on demand from this layer's own
            projections; ``None`` at layer 0, where no attention exists yet.
        instruction: ``(n_text, D)`` hidden states (at this decision point) of the instruction: the text
            tokens after the prompt's last image or video (the question and the template's closing tokens,
            when the question follows the media, as the models' examples place it; a question placed
            before an image is not part of it); ``(0, D)`` if there are none.
    """

    features: torch.Tensor
    frame: torch.Tensor
    slot: torch.Tensor
    num_frames: int
    num_slots: int
    relevance_from_attention: Callable[..., torch.Tensor] | None = None
    instruction: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.features.shape[0])

    def grid(self, who: str) -> torch.Tensor:
        """The tokens as the full ``(T, P, D)`` video grid (true at layer 0, before any pruning); a clear
        error naming ``who`` needs it when tokens are missing."""
        if self.num_tokens != self.num_frames * self.num_slots:
            raise ValueError(
                f"{who} needs the full video grid (frames x slots) at layer 0: {self.num_tokens} tokens for "
                f"{self.num_frames} frames x {self.num_slots} slots"
            )
        return self.features.view(self.num_frames, self.num_slots, -1)


@dataclass
class Decision:
    """What a method decided for one sample at one decision point.

    Attributes:
        keep: ``(N,)`` bool, the tokens that stay.
        merge_into: optional ``(N,)`` int64: for a removed token, the index (into the same N) of the kept
            token it is averaged into; -1 (or the token's own index for kept tokens) otherwise. The runtime
            averages any per-token side inputs (e.g. Qwen3-VL's deepstack features) the same way.
        features: optional ``(N_kept, D)`` replacement hidden states of the kept tokens (the merged
            means); when absent the runtime computes them from ``merge_into``.

    Read only for ``hieravid.apply(..., trace=True)`` (set them from values the method computed anyway):

        scores: optional ``(N,)`` score the tokens were ranked by, higher = more worth keeping (HieraVid:
            the relevance r of Eq. 8).
        segment: optional ``(N,)`` int64 segment of each token present.
        frame_segment: optional ``(T,)`` int64 segment of each frame, where the method segments the video.
        stage: optional number the method gives this decision point (HieraVid: its stage k, 1 before
            the LLM; a stage it skips keeps its number).
    """

    keep: torch.Tensor
    merge_into: torch.Tensor | None = None
    features: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    segment: torch.Tensor | None = None
    frame_segment: torch.Tensor | None = None
    stage: int | None = None


@dataclass
class PruningMethod:
    """Base of every method. Subclasses set ``name`` and implement :meth:`decision_layers` and
    :meth:`decide`.

    ``state`` is per sample and per prefill: the runtime passes the same dict to every decision of one
    sample in one prefill (with ``state["num_layers"]`` set), so a method can carry segment ids or
    scores from stage to stage. A method may record ``state["num_segments"]`` for the statistics.
    """

    name: str = field(default="base", init=False)

    def decision_layers(self, num_layers: int) -> list[int]:
        """Decision points for a decoder of ``num_layers`` layers (0 = before layer 0)."""
        raise NotImplementedError

    def decide(self, layer: int, tokens: VideoTokens, state: dict) -> Decision:
        """Decide at ``layer`` for one sample."""
        raise NotImplementedError

    def attention_layer(self, layer: int) -> int:
        """The decoder layer whose attention ``relevance_from_attention`` gives at decision point ``layer``
        (>= 1): ``layer`` itself (its projections on its input; the default) or ``layer - 1`` (the
        attention the previous layer computed, over the same tokens)."""
        return layer

    def active(self, layer: int, state: dict) -> bool:
        """False once this sample has nothing left to decide at ``layer`` or any later point. When no
        sample of a batch is active the runtime skips the point: no relevance rows, no gathers, no
        device read. Every point is active by default."""
        return True

    def prepare(self, device: torch.device) -> None:
        """Do once, when the method is applied to a model on ``device``, the set-up its first decision
        would otherwise pay for (compiling a kernel). Nothing by default."""

    def expected_tokens_per_layer(self, num_visual: int, num_layers: int) -> list[int] | None:
        """Visual tokens entering each layer that this method aims for (None if data dependent)."""
        return None


class BeforeLLMMethod(PruningMethod):
    """A method that decides once, on the LLM input embeddings, and keeps a fraction of the visual
    tokens for every layer: its kept fraction is the budget itself (f = B, spec section 3's average of a
    flat profile). Subclasses set ``self.budget`` and implement :meth:`decide` for layer 0."""

    budget: float = 1.0

    def keep_fraction(self, num_layers: int) -> float:
        """Kept fraction f at layer 0 (= B)."""
        return keep_fraction_from_layer(self.budget, num_layers, 0)

    def decision_layers(self, num_layers: int) -> list[int]:
        """``[0]``, or nothing at budget 1 (every token stays)."""
        return [0] if self.keep_fraction(num_layers) < 1.0 else []

    def expected_tokens_per_layer(self, num_visual: int, num_layers: int) -> list[int]:
        return [keep_count(self.keep_fraction(num_layers), num_visual)] * num_layers

    def kept_count(self, tokens: VideoTokens, state: dict) -> int:
        """Tokens this sample keeps: ``keep_count(B, N)``."""
        return keep_count(self.keep_fraction(state["num_layers"]), tokens.num_tokens)

    def video_grid(self, layer: int, tokens: VideoTokens) -> torch.Tensor:
        """The sample's tokens as the full ``(T, P, D)`` grid; a clear error off layer 0 or when the
        grid is incomplete."""
        if layer != 0:
            raise ValueError(f"{self.name} decides before layer 0 only, was asked at layer {layer}")
        return tokens.grid(self.name)
