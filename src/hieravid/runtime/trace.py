"""An opt-in record of what a method decided in the last prefill, token by token.

``hieravid.apply(model, ..., trace=True)`` makes ``handle.last_trace`` a :class:`PruneTrace` after each
prefill; without ``trace=True`` nothing is recorded (``last_trace`` stays None) and nothing is computed.
The trace holds only values the method and the runtime computed anyway (no extra forward pass).

Tokens are named by their **token index** in the video: ``frame * P + slot`` (0 .. T*P-1), frame-major, as in
:class:`hieravid.models.VideoLayout` (``positions[i]`` is the sequence position of token ``i``). All tensors
are on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["PruneTrace", "SampleTrace", "StageTrace"]


@dataclass(frozen=True)
class StageTrace:
    """One decision point of one sample.

    Attributes:
        layer: the decision point: 0 = the LLM input (before layer 0), ``l > 0`` = the input of decoder
            layer ``l``.
        tokens: ``(N,)`` int64 token index of each visual token present at this point, in sequence order.
        keep: ``(N,)`` bool, the tokens that stay.
        merged_into: ``(N,)`` int64 token index of the kept token each removed token was averaged into;
            -1 for kept tokens and for removed tokens that were dropped (merged into nothing).
        scores: ``(N,)`` float32 score the method ranked the tokens by at this point (HieraVid: the
            relevance r of Eq. 8, higher = more relevant; ``hieravid_topk``: the attention it ranks by;
            both min-max normalised as Eq. 8 has it, ``(u - min u + eps) / (max u - min u)``, so in [0, 1]
            up to eps over the spread: the picture clips to [0, 1]), or None when it has none.
        segment: ``(N,)`` int64 segment of each token present, or None when the method has no segments.
        stage: the method's number for this decision point (HieraVid: its stage k), or None.
    """

    layer: int
    tokens: torch.Tensor
    keep: torch.Tensor
    merged_into: torch.Tensor
    scores: torch.Tensor | None = None
    segment: torch.Tensor | None = None
    stage: int | None = None

    @property
    def num_present(self) -> int:
        """Visual tokens entering the decision, tokens."""
        return int(self.tokens.numel())

    @property
    def kept_tokens(self) -> torch.Tensor:
        """``(N_kept,)`` token indices that stay."""
        return self.tokens[self.keep]

    @property
    def merged_tokens(self) -> torch.Tensor:
        """``(N_merged,)`` token indices removed by averaging them into a kept token."""
        return self.tokens[self.merged_into >= 0]

    @property
    def dropped_tokens(self) -> torch.Tensor:
        """``(N_dropped,)`` token indices removed without merging."""
        return self.tokens[~self.keep & (self.merged_into < 0)]


@dataclass(frozen=True)
class SampleTrace:
    """Everything one sample's video went through in one prefill.

    Attributes:
        num_frames: T, frames as the model sees them (Qwen-VL: temporal patch groups of 2 input frames).
        num_slots: P, visual tokens per frame.
        positions: ``(T * P,)`` int64 sequence position of each token index.
        stages: the decision points, in layer order (empty for ``vanilla``).
        frame_segment: ``(T,)`` int64 segment of each frame, or None when the method does not segment.
        tokens_per_layer: visual tokens entering each decoder layer (equals ``PruneStats``'s row).
        grid_hw: (rows, cols) of a frame's P tokens as the model arranged them (None: unknown).
        temporal_patch: input frames per model frame (Qwen-VL: 2; the last group of an odd count repeats
            its frame).
    """

    num_frames: int
    num_slots: int
    positions: torch.Tensor
    stages: list[StageTrace]
    frame_segment: torch.Tensor | None
    tokens_per_layer: list[int]
    grid_hw: tuple[int, int] | None = None
    temporal_patch: int = 1

    @property
    def num_tokens(self) -> int:
        """T * P, the video's visual tokens before any pruning."""
        return self.num_frames * self.num_slots

    @property
    def segment_starts(self) -> list[int]:
        """First frame of every segment (``[0]`` for one segment; ``[]`` without segments)."""
        if self.frame_segment is None:
            return []
        seg = self.frame_segment.tolist()
        return [t for t in range(len(seg)) if t == 0 or seg[t] != seg[t - 1]]

    def present_after(self, stage: int) -> torch.Tensor:
        """``(T * P,)`` bool: the tokens present after decision point ``stage`` (an index into
        :attr:`stages`; -1 = before any decision, i.e. every token)."""
        present = torch.ones(self.num_tokens, dtype=torch.bool)
        if stage >= 0:
            present[:] = False
            present[self.stages[stage].kept_tokens] = True
        return present

    def present_at_layer(self, layer: int) -> torch.Tensor:
        """``(T * P,)`` bool: the tokens entering decoder layer ``layer``."""
        last = -1
        for i, st in enumerate(self.stages):
            if st.layer <= layer:
                last = i
        return self.present_after(last)


@dataclass(frozen=True)
class PruneTrace:
    """What a method decided in the last prefill, per sample.

    Attributes:
        method: the method's name.
        num_layers: decoder layers L.
        samples: one :class:`SampleTrace` per sample of the batch; None for a sample without video.
    """

    method: str
    num_layers: int
    samples: list[SampleTrace | None] = field(default_factory=list)
