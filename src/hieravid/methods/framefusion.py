"""FrameFusion (Fu et al., ICCV 2025, "FrameFusion: Combining Similarity and Importance for Video Token
Reduction on Large Visual Language Models"): merging, then pruning.

What the method does (public code ``thu-nics/FrameFusion``, ``framefusion/main.py``):

1. **Merging, layer after layer.** Each visual token is compared (cosine) with the previous token of the
   same patch slot still present (the same slot in the previous frame before any merge). Every token
   whose similarity is at least ``similarity_lower_bound`` (0.6) is merged into the token before it:
   each maximal run of such tokens is averaged, with equal weights, into the token that precedes the
   run. Merging repeats at the next layer while it stays useful:

   - the *sparsity upper bound* u is the pruning ratio that, applied from this layer to the last, would
     spend exactly what is left of the budget. If the tokens above the threshold are fewer than
     ``u * n``, all of them are merged; when they are also fewer than ``ratio_lower_bound * n`` (0.1),
     merging stops and pruning comes next.
   - otherwise only the ``u * n`` most similar tokens are merged, the budget is met, and nothing is
     pruned.
2. **Pruning, once.** At the next decision point the visual tokens are ranked by the attention the last
   prompt token pays them, averaged over heads (FastV's rule), and the top ones are kept so that the
   layer average of the kept fraction equals the budget. (Where merging alone cannot reach a layer's
   target level, pruning runs at that same layer instead; see the guards below.)

Budget: FrameFusion's ``cost`` is the kept visual fraction averaged over the decoder layers (its
``_compute_pruning_ratio`` charges every merge step as one layer and the pruned count for each layer
left), which is exactly this project's relative token budget B, so ``cost = B``. Counts are integers
here: with ``R`` the tokens left in the budget (``B L N_0`` minus the tokens that entered the layers
already run) and ``l`` the current layer, the target level is ``t = R / (L - l)``; the top-k branch keeps
``round(t)`` tokens and the pruning step keeps ``round(t)`` (the reference's ``round(n (1 - u))`` is the
same number; its top-k branch keeps ``n - floor(u n)``, at most one token more). The reference
hard-codes ``num_layers = 28``; here L is the decoder's own depth.

Placement in this runtime. The reference merges on the embeddings before layer 0's attention, then
after the attention block of layer 0, 1, 2, ... (before the MLP), and prunes after the attention block
of the layer following the last merge, with that layer's attention of the last token: merge step s
runs inside layer s - 1, and layer s, the first to attend over the merged tokens, ranks them. Here
every decision point is a layer input: merge step j runs at the input of layer j (step 0 on the input
embeddings, as in the reference), and pruning runs at the input of layer s + 1, the layer after the
last merge (or at the last merge's own layer, under the guards below), ranked by the attention of the
layer before it (:meth:`FrameFusion.attention_layer`): after a last merge at step s that is layer s,
over the same tokens as the reference's ranking. The attention is the last prompt token's, from that
layer's own query/key projections of its input (``VideoTokens.relevance_from_attention(query_rows=1)``,
no eager attention needed). One consequence is
an improvement in the accounting: the reference charges its two layer-0 merges as two layers, while
here each merge step is exactly the count entering one layer, so the layer average is exactly B.
Every layer is a decision point (the number of merge steps depends on the data); once merging and
pruning are done a decision keeps everything.

Guards where the reference raises ``ValueError("The cost is too small")``, so that no layer is left with
nothing while the budget allows more: a threshold merge is taken only if it leaves at least one token
for each later layer (``R - n_kept >= L - l - 1``); otherwise the step goes to the target level at this
very layer, ``round(t)`` tokens. When the top-k merge has candidates enough, it merges the most similar
tokens down to that level. When even merging every candidate cannot reach it, the layer merges the
tokens above the threshold (the similarity merge) and then prunes, at this same layer, to ``round(t)``
tokens by the last prompt token's attention in the layer before, over the tokens this merge started
from (a merged token is ranked by the mean relevance of its members; the tokens merged into a pruned
one go with it); that is the one pruning, and later layers keep
everything. Layer 0 has no attention yet: there the step merges every candidate and pruning follows at
layer 1, keeping ``max(0, round(t))``. So the layer average is B within integer rounding (half a token
per layer after the pruning) whenever B is reachable, and a layer keeps 0 visual tokens only when the
budget asks for at most half a token per remaining layer; only a budget below what layer 0 alone can
cost (one token per slot, about ``1 / T`` of the tokens, when every candidate merges) ends above B.
"""

from __future__ import annotations

from typing import Any

import torch

from hieravid.config import check_budget, check_unit_interval, is_number
from hieravid.methods.base import Decision, PruningMethod, VideoTokens, check_options
from hieravid.ops.ranking import top_k_mask

__all__ = ["FrameFusion", "create_framefusion", "previous_slot_similarity", "run_anchors"]

#: The reference's defaults.
DEFAULT_SIMILARITY_LOWER_BOUND = 0.6
DEFAULT_RATIO_LOWER_BOUND = 0.1


def previous_slot_similarity(features: torch.Tensor, slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity of each token with the previous token of the same slot that is present.

    Args:
        features: ``(N, D)`` visual tokens in sequence order (frame-major).
        slot: ``(N,)`` int64 slot of each token.

    Returns:
        ``(order, similarity)``: ``order`` ``(N,)`` int64 is the tokens grouped by slot, each slot's tokens
        in sequence order (a stable sort by slot); ``similarity`` ``(N,)`` float32 is, at place i of that
        order, the cosine of token ``order[i]`` with token ``order[i - 1]``; ``-inf`` at the first token of
        each slot (no predecessor) and for zero-norm tokens, so they are never merged.
    """
    order = torch.argsort(slot, stable=True)  # (N,)
    x = features[order].float()  # (N, D)
    norms = torch.linalg.vector_norm(x, dim=-1)  # (N,)
    sim = torch.full((x.shape[0],), float("-inf"), device=x.device)
    if x.shape[0] > 1:
        cos = torch.linalg.vecdot(x[1:], x[:-1]) / (norms[1:] * norms[:-1])  # (N-1,)
        same = (slot[order][1:] == slot[order][:-1]) & (norms[1:] > 0) & (norms[:-1] > 0)
        cos = torch.nan_to_num(cos, nan=float("-inf"), posinf=float("-inf"), neginf=float("-inf"))
        sim[1:] = torch.where(same, cos, torch.full_like(cos, float("-inf")))
    return order, sim


def run_anchors(order: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
    """Where each token goes when the marked tokens merge into the token before their run.

    Args:
        order: ``(N,)`` the slot-grouped order from :func:`previous_slot_similarity`.
        merged: ``(N,)`` bool, in that order: True for the tokens merged away (never the first token of
            a slot).

    Returns:
        ``(N,)`` int64 ``merge_into`` in sequence indexing: for a merged token, the (kept) token that
        precedes its run in the same slot; for a kept token, itself.
    """
    place = torch.arange(order.numel(), device=order.device)
    anchor_place = torch.where(merged, torch.zeros_like(place), place).cummax(dim=0).values  # (N,)
    merge_into = torch.empty_like(order)
    merge_into[order] = order[anchor_place]
    return merge_into


class FrameFusion(PruningMethod):
    """FrameFusion at relative budget ``budget`` (its ``cost``).

    Args:
        budget: relative token budget B in (0, 1]: kept visual fraction averaged over the layers.
        similarity_lower_bound: tokens at least this similar to their same-slot predecessor are merged
            (reference default 0.6).
        ratio_lower_bound: merging stops after a step that merged fewer than this fraction of the
            visual tokens present (reference default 0.1).
    """

    def __init__(
        self,
        budget: float = 0.3,
        similarity_lower_bound: float = DEFAULT_SIMILARITY_LOWER_BOUND,
        ratio_lower_bound: float = DEFAULT_RATIO_LOWER_BOUND,
    ) -> None:
        self.name = "framefusion"
        self.budget = check_budget(budget)
        if not is_number(similarity_lower_bound) or not (
            -1.0 <= similarity_lower_bound <= 1.0
        ):
            raise ValueError(
                f"similarity_lower_bound is a cosine similarity in [-1, 1], got {similarity_lower_bound!r} "
                "(the reference uses 0.6)"
            )
        self.similarity_lower_bound = float(similarity_lower_bound)
        self.ratio_lower_bound = check_unit_interval(ratio_lower_bound, "ratio_lower_bound")

    def attention_layer(self, layer: int) -> int:
        """The layer before the decision point: at the pruning point after a last merge at step s, layer s,
        the first to attend over the merged tokens, whose attention the reference ranks them by."""
        return layer - 1

    def decision_layers(self, num_layers: int) -> list[int]:
        """Every layer (how many merge steps run depends on the data); none at budget 1."""
        return [] if self.budget >= 1.0 else list(range(num_layers))

    def active(self, layer: int, state: dict) -> bool:
        """Until the merge steps and the one pruning step are over (``done`` never changes back)."""
        return state.get("phase") != "done"

    def decide(self, layer: int, tokens: VideoTokens, state: dict) -> Decision:
        num_layers = state["num_layers"]
        present = tokens.num_tokens
        if layer == 0:
            state.update(phase="merge", spent=0, allowed=self.budget * num_layers * present, next_layer=0)
        elif state["next_layer"] != layer:
            raise RuntimeError(f"FrameFusion decides at every layer; got layer {layer} after {state['next_layer'] - 1}")
        else:
            state["spent"] += present  # the tokens that entered layer - 1
        state["next_layer"] = layer + 1
        keep_all = torch.ones(present, dtype=torch.bool, device=tokens.features.device)
        target = (state["allowed"] - state["spent"]) / (num_layers - layer)  # tokens per remaining layer
        if state["phase"] == "prune":
            state["phase"] = "done"
            kept = min(max(round(target), 0), present)
            if kept == present:
                return Decision(keep=keep_all)
            if tokens.relevance_from_attention is None:
                raise ValueError(f"FrameFusion prunes by attention at layer {layer}; the runtime gave none")
            return Decision(keep=top_k_mask(tokens.relevance_from_attention(query_rows=1), kept))
        if state["phase"] == "done" or present <= target:
            state["phase"] = "done"
            return Decision(keep=keep_all)
        return self._merge(tokens, state, target)

    def _merge(self, tokens: VideoTokens, state: dict, target: float) -> Decision:
        """One merge step at a decision point (``target``: tokens per remaining layer the budget allows)."""
        present = tokens.num_tokens
        later_layers = state["num_layers"] - state["next_layer"]  # layers after this one
        order, sim = previous_slot_similarity(tokens.features, tokens.slot)
        above = sim >= self.similarity_lower_bound  # (N,) in slot order
        merged_count = int(above.sum())
        left_after = state["allowed"] - state["spent"] - (present - merged_count)
        if present - merged_count > target and left_after >= later_layers:
            merged = above
            if merged_count < self.ratio_lower_bound * present:
                state["phase"] = "prune"
        else:
            # Top-k branch: merge just enough to meet the budget at this level; nothing to prune after.
            level = min(max(round(target), 0), present)
            candidates = int(torch.isfinite(sim).sum())
            want = present - level
            if want > candidates and tokens.relevance_from_attention is not None:
                # Merging cannot reach the level: merge the similar tokens and prune the rest here.
                state["phase"] = "done"
                return self._merge_and_prune(tokens, order, above, level)
            k = min(want, candidates)
            best = torch.argsort(-sim, stable=True)[:k]  # most similar first, ties by slot order
            merged = torch.zeros_like(above)
            merged[best] = True
            state["phase"] = "done" if k == want else "prune"
        if not bool(merged.any()):
            return Decision(keep=torch.ones(present, dtype=torch.bool, device=tokens.features.device))
        keep = torch.empty_like(merged)
        keep[order] = ~merged
        return Decision(keep=keep, merge_into=run_anchors(order, merged))

    def _merge_and_prune(
        self, tokens: VideoTokens, order: torch.Tensor, above: torch.Tensor, level: int
    ) -> Decision:
        """Merge the tokens marked ``above`` (slot order) into their runs' anchors, then keep the ``level``
        merged tokens the last prompt token attends to most (a group scores the mean relevance of its
        members at this layer); the groups of pruned anchors are dropped with them."""
        present = tokens.num_tokens
        device = tokens.features.device
        merge_into = run_anchors(order, above)  # (N,) sequence indexing
        anchor = merge_into == torch.arange(present, device=device)  # (N,) present after merging
        relevance = tokens.relevance_from_attention(query_rows=1).float()  # (N,) mean over heads
        total = torch.zeros(present, device=device).index_add_(0, merge_into, relevance)  # (N,) per anchor
        size = torch.zeros(present, device=device).index_add_(0, merge_into, torch.ones_like(relevance))
        # (N,) a group's mean relevance at its anchor; the merged-away tokens are never kept
        score = torch.where(anchor, total / size.clamp_min(1.0), torch.full_like(total, float("-inf")))
        keep = top_k_mask(score, level)  # (N,) anchors only: level < the anchors present
        merge_into = torch.where(keep[merge_into], merge_into, torch.full_like(merge_into, -1))
        return Decision(keep=keep, merge_into=merge_into)

    def expected_tokens_per_layer(self, num_visual: int, num_layers: int) -> list[int] | None:
        return None  # data dependent (how much merges)


def create_framefusion(budget: float, **options: Any) -> PruningMethod:
    """Registry factory: ``FrameFusion(budget, **options)``; options: ``similarity_lower_bound`` (0.6),
    ``ratio_lower_bound`` (0.1)."""
    allowed = {"similarity_lower_bound", "ratio_lower_bound"}
    check_options("framefusion", options, allowed)
    return FrameFusion(budget, **options)
