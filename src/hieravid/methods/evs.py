"""EVS ("Efficient Video Sampling: Pruning Temporally Redundant Tokens for Faster VLM Inference",
NVIDIA, arXiv:2510.14624), as serving engines run it
(vLLM's ``video_pruning_rate`` for Qwen2.5-VL / Qwen3-VL / NVIDIA Nemotron, ``vllm/multimodal/evs.py``):
drop the tokens that barely changed since the previous frame, before the LLM.

Rule, per video, on the tokens entering layer 0 (the projected visual features, the same tensor
vLLM's ``compute_retention_mask`` sees after the vision tower's merger):

1. every token gets its dissimilarity ``1 - cos(x[t, p], x[t - 1, p])`` to the token in the same slot
   p of the previous frame (``torch.nn.functional.cosine_similarity``, eps 1e-8, so a zero vector has
   similarity 0 and dissimilarity 1);
2. the first frame has no predecessor and gets the sentinel 255 (above any dissimilarity, which lies
   in [0, 2]): it ranks first;
3. all tokens of the video are ranked together by decreasing dissimilarity with a STABLE sort (ties
   go to the earlier token in the sequence, as in vLLM), and the first K stay, in sequence order.

Nothing is merged: the other tokens are dropped.

Budget rule: pruning happens before layer 0, so the kept fraction is f = B
(:func:`hieravid.methods.budget.keep_fraction_from_layer` with layer 0) and K = ``keep_count(B, T P)``
exactly, the same count as every other layer-0 method here. Two differences from vLLM's count
``max(P, int(T P (1 - q)))`` with pruning rate ``q = 1 - B``:

* rounding: ``keep_count`` keeps ``n - floor((1 - B) n)`` (vLLM: ``floor(B n)``, up to one token fewer);
* no one-frame floor: vLLM never keeps fewer than one frame's P tokens. Here, when
  ``keep_count(B, T P) < P`` (B < 1/T), the budget wins and only the first K slots of frame 0 stay
  (the tied sentinels, broken by sequence order). At B >= 1/T the first frame is always kept whole,
  as in vLLM.

Dissimilarities are computed in float32 (vLLM computes them in the model dtype, bf16 on GPU), so a
near-tie may break differently from a bf16 run.
"""

from __future__ import annotations

from typing import Any

import torch

from hieravid.config import check_budget
from hieravid.methods.base import BeforeLLMMethod, Decision, PruningMethod, VideoTokens

__all__ = ["EVS", "create_evs", "evs_dissimilarity", "evs_keep"]

#: vLLM's score of the first frame's tokens: above any ``1 - cos`` (at most 2), so they rank first.
FIRST_FRAME_SCORE = 255.0
#: ``torch.nn.functional.cosine_similarity``'s default eps, which vLLM's rule uses.
COSINE_EPS = 1e-8


def evs_dissimilarity(x: torch.Tensor) -> torch.Tensor:
    """``(T, P, D) -> (T, P)`` float32: ``1 - cos`` to the same slot of the previous frame; frame 0 gets
    :data:`FIRST_FRAME_SCORE`."""
    xf = x.float()
    first = torch.full_like(xf[:1, :, 0], FIRST_FRAME_SCORE)  # (1, P)
    if x.shape[0] == 1:
        return first
    # F.cosine_similarity's rule (each norm clamped to eps 1e-8: a zero vector has similarity 0), with each
    # token's norm computed once and one fused dot per pair, a few times faster than that function
    norms = torch.linalg.vector_norm(xf, dim=-1).clamp_min(COSINE_EPS)  # (T, P)
    similarity = torch.linalg.vecdot(xf[1:], xf[:-1]) / (norms[1:] * norms[:-1])  # (T-1, P)
    return torch.cat([first, 1.0 - similarity], dim=0)


def evs_keep(x: torch.Tensor, num_keep: int) -> torch.Tensor:
    """The EVS retention mask: the ``num_keep`` tokens of highest dissimilarity over the whole video.

    Args:
        x: ``(T, P, D)`` visual tokens entering layer 0, frame-major.
        num_keep: tokens to keep, ``0 <= num_keep <= T P``.

    Returns:
        ``(T, P)`` bool mask with exactly ``num_keep`` True (ties: the earlier token in the sequence).
    """
    num_frames, num_slots, _ = x.shape
    total = num_frames * num_slots
    if not 0 <= num_keep <= total:
        raise ValueError(f"num_keep must be in [0, {total}] (the video's tokens), got {num_keep}")
    score = evs_dissimilarity(x).reshape(-1)  # (T P,)
    order = torch.argsort(score, descending=True, stable=True)
    keep = torch.zeros(total, dtype=torch.bool, device=x.device)
    keep[order[:num_keep]] = True
    return keep.view(num_frames, num_slots)


class EVS(BeforeLLMMethod):
    """EVS at relative budget ``budget``: one decision before layer 0 keeping ``keep_count(B, T P)``
    tokens ranked by temporal dissimilarity.

    Args:
        budget: relative token budget B in (0, 1]; the kept fraction at layer 0 is B itself.
    """

    def __init__(self, budget: float = 0.3) -> None:
        self.name = "evs"
        self.budget = check_budget(budget)

    def decide(self, layer: int, tokens: VideoTokens, state: dict) -> Decision:
        x = self.video_grid(layer, tokens)  # (T, P, D)
        kept = self.kept_count(tokens, state)
        return Decision(keep=evs_keep(x, kept).reshape(-1))


def create_evs(budget: float, **options: Any) -> PruningMethod:
    """Registry factory: ``EVS(budget)``; EVS takes no options."""
    if options:
        raise ValueError(f"method 'evs' takes no options, got {', '.join(sorted(options))}")
    return EVS(budget)
