"""PruMerge+ (Shang et al. 2024, "LLaVA-PruMerge: Adaptive Token Reduction for Efficient Large
Multimodal Models"), adapted to video LLMs whose vision tower has no CLS token, before the LLM.

The original, per image, inside CLIP-ViT (``clip_encoder.py``, ``token_prune_merge_advanced_plus``):

1. importance ``a = softmax(q_cls K^T / sqrt(C))``: the CLS query's attention over the patch keys of
   the penultimate layer;
2. PruMerge keeps the IQR outliers of a (``a > Q3 + 1.5 IQR``, their count m decided by the data);
   PruMerge+ adds spatially uniform samples (every ``floor(floor(N / m) / 3)``-th patch in raster
   order, those not already kept): about three uniform samples per outlier, so a quarter of the kept
   tokens come from importance and three quarters from the uniform grid;
3. merge: every kept token i is updated with its k = 32 nearest tokens (cosine of the keys, among all
   other patches, kept or not): ``y_i = x_i + sum_{j in kNN(i)} a_j x_j`` (attention-weighted, the
   weights not renormalised: the code's ``/ torch.sum(weights)`` is commented out).

Adaptation here (the supported towers are SigLIP without a CLS token, and the runtime only sees the
projected visual tokens entering layer 0), per frame t with tokens ``x_t`` ``(P, D)``:

* importance: a pseudo-CLS query, the frame's mean token ``q_t = mean_p x_t[p]``, attends over the
  frame's tokens: ``a_t = softmax_p(<q_t, x_t[p]> / sqrt(D))`` (float32);
* counts: the budget fixes the video's count ``K = keep_count(B, T P)``, spread evenly over frames
  (``n_t = floor((t+1) K / T) - floor(t K / T)``, so sum n_t = K exactly). In each frame the PruMerge+
  proportion (one importance token per three uniform samples) gives ``ceil(n_t / 4)`` importance
  tokens and ``n_t - ceil(n_t / 4)`` uniform samples;
* IQR: since the count is fixed, the IQR rule no longer decides how many tokens stay; it orders the
  importance quota: the frame's IQR outliers come first (most important first), and when the quota
  is larger than the outlier count it is filled with the next most important tokens; when it is
  smaller, the most important outliers fill it. As outliers are by definition the top of the
  importance distribution, this equals the top ``ceil(n_t / 4)`` tokens by importance (ties: lower
  slot). The per-frame outlier counts (PruMerge's own adaptive count) are recorded in
  ``state["iqr_outliers"]`` (``(T,)`` int64) for inspection;
* uniform samples: ``n_u`` tokens evenly spaced in raster (slot) order over the frame's ``R``
  remaining tokens, at ranks ``floor(i R / n_u)``, i = 0..n_u-1 (the original's grid starts at patch
  0; here the grid is laid over the remaining tokens so the count is exact, instead of dropping the
  grid points that collide with outliers);
* merge: as the original, every kept token absorbs its ``k`` nearest tokens of the same frame (cosine
  of the features, as keys are not available; all other tokens of the frame, kept or not; k = 32, the
  inference code's value, capped at P - 1) with ``y_i = x_i + sum_j a_j x_j``, returned as
  ``Decision(features=...)``. ``merge="average"`` (not the paper's) uses the attention-weighted mean
  ``(a_i x_i + sum_j a_j x_j) / (a_i + sum_j a_j)`` instead, which keeps the embedding scale.

Not reproduced: the original appends one extra token (the attention-weighted sum of all pruned
patches); the runtime cannot add tokens and the budget's count is exact, so it is left out. Qwen3-VL's
deepstack side features are not merged (no ``merge_into``: a pruned token may feed several kept
tokens); the kept tokens keep their own.

``plus=False`` gives PruMerge's selection (importance only, no uniform samples) with the same merge.

Cost per video: one batched ``(T, P, P)`` similarity and one ``(T, P, P) x (T, P, D)`` product for the
merge; no loop over tokens or frames.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from hieravid.config import check_budget, check_choice, is_integer
from hieravid.methods.base import BeforeLLMMethod, Decision, PruningMethod, VideoTokens, check_options

__all__ = [
    "PruMerge",
    "create_prumerge",
    "frame_counts",
    "iqr_outliers",
    "prumerge_importance",
    "prumerge_merge",
    "prumerge_select",
]

#: The inference code's k of the k-nearest-neighbour merge.
DEFAULT_NEIGHBORS = 32
#: PruMerge+ samples the uniform grid with a third of the outliers' stride: three per outlier.
UNIFORM_PER_IMPORTANT = 3
#: Tukey's fence of the IQR outlier rule.
IQR_FENCE = 1.5


def frame_counts(total: int, num_frames: int, num_slots: int) -> torch.Tensor:
    """``total`` tokens spread evenly over frames: ``(T,)`` int64, ``floor((t+1) K / T) - floor(t K / T)``."""
    if not 0 <= total <= num_frames * num_slots:
        raise ValueError(f"total must be in [0, {num_frames * num_slots}], got {total}")
    edges = torch.div(torch.arange(num_frames + 1, device="cpu") * total, num_frames, rounding_mode="floor")
    return edges[1:] - edges[:-1]


def prumerge_importance(x: torch.Tensor) -> torch.Tensor:
    """``(T, P, D) -> (T, P)`` float32: attention of each frame's pseudo-CLS query (its mean token)
    over its tokens, ``softmax_p(<mean_p x, x_p> / sqrt(D))``."""
    xf = x.float()
    query = xf.mean(dim=1)  # (T, D)
    logits = torch.einsum("tpd,td->tp", xf, query) / math.sqrt(x.shape[-1])
    return logits.softmax(dim=1)


def iqr_outliers(importance: torch.Tensor) -> torch.Tensor:
    """``(T, P) -> (T, P)`` bool: PruMerge's outliers, ``a > Q3 + 1.5 (Q3 - Q1)`` per frame (linear
    quantiles, as ``numpy.percentile``)."""
    q = torch.quantile(importance, torch.tensor([0.25, 0.75], device=importance.device), dim=1)  # (2, T)
    fence = q[1] + IQR_FENCE * (q[1] - q[0])
    return importance > fence.unsqueeze(1)


def prumerge_select(
    importance: torch.Tensor, counts: torch.Tensor, *, plus: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which tokens stay in each frame: the importance quota plus the uniform samples.

    Args:
        importance: ``(T, P)`` importance a.
        counts: ``(T,)`` int64 tokens to keep per frame, ``0 <= n_t <= P``.
        plus: PruMerge+ (quota ``ceil(n_t / 4)`` by importance, the rest uniform) or PruMerge (all by
            importance).

    Returns:
        ``keep (T, P)`` bool with exactly ``n_t`` True per frame, and ``important (T, P)`` bool, the
        part chosen by importance.
    """
    num_frames, num_slots = importance.shape
    device = importance.device
    counts = counts.to(device)
    quota = -torch.div(-counts, UNIFORM_PER_IMPORTANT + 1, rounding_mode="floor") if plus else counts  # ceil
    order = torch.argsort(-importance, dim=1, stable=True)  # most important first (outliers first)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(num_slots, device=device).expand(num_frames, -1))
    important = rank < quota.unsqueeze(1)
    # Uniform samples over the remaining tokens: rank p (raster order among them) is taken when some
    # i in [0, n_u) has floor(i R / n_u) = p, i.e. when ceil((p + 1) n_u / R) - ceil(p n_u / R) = 1.
    remaining = ~important
    position = torch.cumsum(remaining.long(), dim=1) - 1  # (T, P) rank among the remaining tokens
    left = remaining.sum(dim=1, keepdim=True).clamp(min=1)  # (T, 1) R
    uniform = (counts - quota).unsqueeze(1)  # (T, 1) n_u <= R

    def ceil_div(p: torch.Tensor) -> torch.Tensor:
        return torch.div(p * uniform + left - 1, left, rounding_mode="floor")

    sampled = remaining & (ceil_div(position + 1) - ceil_div(position) == 1)
    return important | sampled, important


def prumerge_merge(
    x: torch.Tensor,
    importance: torch.Tensor,
    keep: torch.Tensor,
    *,
    neighbors: int = DEFAULT_NEIGHBORS,
    merge: str = "sum",
) -> torch.Tensor:
    """The merged kept tokens, in sequence (frame-major) order.

    Every kept token i of frame t is updated with its ``k = min(neighbors, P - 1)`` most similar other
    tokens j of the frame (cosine of the features): ``x_i + sum_j a_j x_j`` (``merge="sum"``, the
    paper's code) or ``(a_i x_i + sum_j a_j x_j) / (a_i + sum_j a_j)`` (``merge="average"``).

    Args:
        x: ``(T, P, D)`` tokens.
        importance: ``(T, P)`` importance a.
        keep: ``(T, P)`` bool kept tokens.

    Returns:
        ``(N_kept, D)`` merged tokens in x's dtype.
    """
    check_choice(merge, "merge", ("sum", "average"))
    num_frames, num_slots, _ = x.shape
    xf = x.float()
    a = importance.float()
    k = min(neighbors, num_slots - 1)
    weights = torch.zeros(num_frames, num_slots, num_slots, dtype=torch.float32, device=x.device)  # (T, P, P)
    if k > 0:
        unit = F.normalize(xf, dim=-1)
        similarity = torch.bmm(unit, unit.transpose(1, 2))  # (T, P, P)
        similarity.diagonal(dim1=1, dim2=2).fill_(float("-inf"))  # a token is not its own neighbour
        nearest = similarity.topk(k, dim=2).indices  # (T, P, k)
        weights.scatter_(2, nearest, a.unsqueeze(1).expand(-1, num_slots, -1).gather(2, nearest))
    absorbed = torch.bmm(weights, xf)  # (T, P, D) sum_j a_j x_j over each token's neighbours
    if merge == "sum":
        merged = xf + absorbed
    else:
        total = (a + weights.sum(dim=2)).unsqueeze(2)  # (T, P, 1) > 0 unless every weight underflowed
        merged = torch.where(total > 0, (a.unsqueeze(2) * xf + absorbed) / total.clamp(min=1e-30), xf)
    # The sum can reach twice the largest feature: past the range of x's dtype (float16's 65504) it
    # saturates rather than turn a finite feature into inf.
    limit = torch.finfo(x.dtype).max
    return merged[keep].clamp_(-limit, limit).to(x.dtype)


class PruMerge(BeforeLLMMethod):
    """PruMerge+ (``plus=True``, default) or PruMerge at relative budget ``budget``: one decision before
    layer 0 keeping ``keep_count(B, T P)`` tokens, per frame, with the kept tokens merged.

    Args:
        budget: relative token budget B in (0, 1]; the kept fraction at layer 0 is B itself.
        neighbors: k of the k-nearest-neighbour merge (32, the inference code's).
        plus: PruMerge+ (importance quota + uniform samples) or PruMerge (importance only).
        merge: ``"sum"`` (the code's ``x_i + sum a_j x_j``) or ``"average"`` (attention-weighted mean).
    """

    def __init__(
        self, budget: float = 0.3, neighbors: int = DEFAULT_NEIGHBORS, plus: bool = True, merge: str = "sum"
    ) -> None:
        self.name = "prumerge"
        self.budget = check_budget(budget)
        if not is_integer(neighbors) or neighbors < 0:
            raise ValueError(f"neighbors must be an integer >= 0 (the paper's code uses 32), got {neighbors!r}")
        if not isinstance(plus, bool):
            raise ValueError(f"plus must be True (PruMerge+) or False (PruMerge), got {plus!r}")
        self.neighbors = int(neighbors)
        self.plus = plus
        self.merge = check_choice(merge, "merge", ("sum", "average"))

    def decide(self, layer: int, tokens: VideoTokens, state: dict) -> Decision:
        x = self.video_grid(layer, tokens)  # (T, P, D)
        kept = self.kept_count(tokens, state)
        importance = prumerge_importance(x)
        state["iqr_outliers"] = iqr_outliers(importance).sum(dim=1)
        keep, _ = prumerge_select(importance, frame_counts(kept, tokens.num_frames, tokens.num_slots), plus=self.plus)
        features = prumerge_merge(x, importance, keep, neighbors=self.neighbors, merge=self.merge)
        return Decision(keep=keep.reshape(-1), features=features)


def create_prumerge(budget: float, **options: Any) -> PruningMethod:
    """Registry factory: ``PruMerge(budget, **options)``; options: ``neighbors``, ``plus``, ``merge``."""
    allowed = {"neighbors", "plus", "merge"}
    check_options("prumerge", options, allowed)
    return PruMerge(budget, **options)
