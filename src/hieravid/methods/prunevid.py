"""PruneVid (Huang, Zhou, Han; ACL 2025, "PruneVid: Visual Token Pruning for Efficient Video Large Language
Models"): spatio-temporal merging before the LLM, question-guided selection inside it.

What the method does (public code ``Visual-AI/PruneVid``, ``models/pllava/modeling_pllava.py`` and
``models/pllava/elastic_cache.py``; defaults from ``scripts/eval.sh``):

1. **Temporal segments** (before the LLM). The frames' mean features are clustered with DPC-KNN
   (:func:`dpc_knn`, ``int(T * temporal_segment_ratio)`` clusters, ratio 0.25, k = 7); the labels are made
   temporally contiguous (:func:`refine_clusters`: each cluster keeps its longest run, the other runs
   join their longer neighbour), and every run of equal labels is a segment.
2. **Static and dynamic tokens.** Inside a segment of W frames, a slot is *static* when the mean pairwise
   cosine similarity of its W tokens (all pairs of distinct frames) is above ``tau`` (0.8). A static slot
   is averaged over the W frames into one token; the segment's static tokens are then clustered
   spatially with DPC-KNN (``int(n * cluster_ratio)`` clusters, k = 7, only when there are more than 14)
   and each cluster is averaged. The dynamic tokens of each frame are clustered the same way, frame by
   frame. With one frame in a segment every token is dynamic.
3. **Question-guided selection** (inside the LLM, at layer M). The visual tokens are ranked by the
   attention that the instruction's tokens (``VideoTokens.instruction``: the question and the template's
   closing tokens) pay them, and the top fraction alpha (0.4) is kept in every group: the static tokens
   of each segment, and the dynamic tokens of each frame.

Mapping of the relative token budget B (the kept visual fraction averaged over the L layers). The
nominal profile keeps ``n_1`` tokens in layers ``[0, M)`` and a fraction ``alpha`` of them after, which
averages to B when ``n_1 = c_0 N_0`` with::

    c_0 = min(1, B L / (M + alpha (L - M)))

(0.49 at B = 0.3 with L = 28, M = 10: the paper's cluster ratio 0.5 when no token is static). The merging
strength is the spatial cluster ratio: once the static/dynamic split of every segment is known, the
cluster ratio is the smallest one (found by bisection) whose merged count reaches ``c_0 N_0``, so a static
video, whose tokens already shrink W-fold in time, is clustered less (up to ratio 1, no spatial
clustering) and one without static tokens gets about ``c_0``. The result is still data dependent (whole
clusters, groups of 14 tokens or fewer are never clustered), so layer M corrects it: with ``N_0`` tokens
at first and ``n_1`` after merging, layer M keeps ``round((B L N_0 - M n_1) / (L - M))`` tokens (at most
``n_1``), which makes the layer average B up to that rounding. Only a video so static that its
temporal merge alone goes below ``B N_0`` ends under the budget (layer M then keeps everything). The kept
count is split over the groups in proportion to their sizes (largest remainders first; the reference
keeps ``int(alpha n_g)`` in each group), and each group keeps its highest-attention tokens. At budget 1
nothing is merged or pruned (no decision points).

Layer M keeps at least one visual token (PruneVid selects among the video's tokens, it never drops the
whole video). Where whole clusters round ``n_1`` up so far that layer M would keep none, the merge keeps
fewer clusters instead: the largest cluster ratio that leaves layer M a token. A budget that needs the
count below one even with the fewest clusters (one per group) is refused: the smallest budget reachable
on a video is ``(M n_1 + L - M) / (L N_0)`` with that fewest ``n_1``, and a smaller one raises a
``ValueError`` naming it, at the merge (before layer 0 runs, once ``n_1`` is known), like FastV below
``K / L``. It happens when the merge cannot shrink the video enough (every group keeps at least one
cluster), e.g. frames of at most 14 tokens per group, which are never clustered, so ``n_1 = N_0`` and
the minimum is just above ``M / L`` (0.393 with M = 3 of L = 8 and 36 tokens). The ways out are a larger
budget, an earlier selection layer (``layer``) or more tokens per frame. The reference has no budget to miss (it keeps ``int(alpha n_g)``
whatever that costs); clustering the small groups anyway, or emptying layer M, would no longer be PruneVid.

Placement and other differences from the reference:

- M defaults to ``round(10 / 28 * L)`` (10 on a 28-layer decoder). The public code selects at layer 10
  of PLLaVA-7B, a 32-layer LLaMA (``selected_layer = 10``), after that layer has run, using its
  attention; here the selection runs at the input of layer M with layer M's own query/key projections.
  The scale is 28 layers, the depth of the 7B decoders compared here (Qwen2-7B), so that they select at
  the public code's layer 10 as its constant does (scaled from PLLaVA's 32 layers it would be layer 9).
  ``layer`` sets M explicitly.
- The attention is averaged over heads and question rows (``relevance_from_attention``, no eager
  attention needed); the reference takes the maximum over heads, then over question rows.
- Merged tokens keep an original position: a static cluster sits at its DPC centre's slot in the
  segment's first frame, a dynamic cluster at its centre token; the runtime averages each cluster's
  members (equal weights, the reference's means). The reference lays the merged tokens out anew
  (each segment's static tokens, then its dynamic tokens frame by frame) with fresh positions.
- DPC-KNN breaks density ties by token index instead of the reference's random 1e-6 noise, so the
  decisions are deterministic.
- The reference also drops the pruned tokens from the KV caches of the layers before M (it only matters
  for decoding); here those layers keep the keys of every merged token they saw.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from hieravid.config import check_budget, check_unit_interval, is_integer
from hieravid.methods.base import Decision, PruningMethod, VideoTokens, check_options
from hieravid.ops.ranking import segment_top_k

__all__ = [
    "PruneVid",
    "cluster_ratio_at_most",
    "cluster_ratio_for",
    "clustered_count",
    "create_prunevid",
    "dpc_knn",
    "group_quotas",
    "merged_count",
    "refine_clusters",
    "static_slots",
    "temporal_segments",
]

#: The reference's defaults (scripts/eval.sh, modeling_pllava.py).
DEFAULT_TAU = 0.8
DEFAULT_ALPHA = 0.4
DEFAULT_TEMPORAL_SEGMENT_RATIO = 0.25
DEFAULT_KNN = 7
#: Groups of at most this many tokens are not clustered spatially (the reference's ``> 14`` rule).
MIN_CLUSTERED_TOKENS = 14
#: The reference's selection layer and the depth it is scaled from (layer ``round(10 / 28 * L)``).
REFERENCE_LAYER, REFERENCE_DEPTH = 10, 28


def dpc_knn(x: torch.Tensor, num_clusters: int, k: int = DEFAULT_KNN) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-peaks clustering with k-nearest-neighbour density (DPC-KNN), batched.

    Distances are Euclidean divided by ``sqrt(C)``. Density ``rho_i = exp(-mean of the squared distances to
    the k nearest tokens, itself included)``; ``delta_i`` = distance to the nearest denser token (the
    largest distance of the item for the densest one). The ``num_clusters`` tokens with the highest
    ``rho * delta`` are the centres; every token joins its nearest centre, and each centre its own
    cluster. Density ties go to the lower index, score ties to the lower index. Both are ranked as
    logarithms (``log rho``, ``log rho + log delta``): rho itself is 0 in float32 once the mean squared
    distance passes ~104, which would tie every density of far-apart features.

    Args:
        x: ``(B, N, C)`` B independent sets of N tokens.
        num_clusters: centres per set, ``1 <= num_clusters <= N``.
        k: neighbours for the density (capped at N).

    Returns:
        ``labels`` ``(B, N)`` int64 cluster of each token (``0..num_clusters-1``, in centre-score order) and
        ``centers`` ``(B, num_clusters)`` int64 token index of each cluster's centre.
    """
    batch, num_tokens, channels = x.shape
    if not 1 <= num_clusters <= num_tokens:
        raise ValueError(f"num_clusters must be in [1, N={num_tokens}], got {num_clusters}")
    xf = x.float()
    dist = torch.cdist(xf, xf) / math.sqrt(channels)  # (B, N, N)
    nearest = dist.topk(min(k, num_tokens), dim=-1, largest=False).values  # (B, N, k)
    log_density = -(nearest**2).mean(dim=-1)  # (B, N) log rho: rho itself is 0 in float32 past ~104
    rank = torch.argsort(torch.argsort(-log_density, dim=-1, stable=True), dim=-1)  # (B, N) 0 = densest
    denser = rank.unsqueeze(1) < rank.unsqueeze(2)  # (B, N_i, N_j): j is denser than i
    farthest = dist.flatten(1).max(dim=-1).values  # (B,)
    delta = torch.where(denser, dist, farthest[:, None, None]).min(dim=-1).values  # (B, N)
    score = torch.log(delta) + log_density  # log(rho * delta), same order
    centers = torch.argsort(-score, dim=-1, stable=True)[:, :num_clusters]  # (B, K)
    to_centers = dist.gather(1, centers.unsqueeze(-1).expand(-1, -1, num_tokens))  # (B, K, N)
    labels = to_centers.argmin(dim=1)  # (B, N) first nearest centre on ties
    ids = torch.arange(num_clusters, device=x.device).expand(batch, -1)
    labels.scatter_(1, centers, ids)
    return labels, centers


def refine_clusters(labels: list[int]) -> list[int]:
    """Make frame-cluster labels temporally contiguous, as the reference does.

    Each label keeps its longest run(s) of consecutive frames; a label whose runs all have length 1 keeps
    none. Every other run is relabelled, left to right, with the label of its longer neighbouring run
    (the left one on a tie, 0 when it has no neighbour).

    Args:
        labels: one cluster label per frame.

    Returns:
        The refined labels (same length).
    """
    n = len(labels)
    runs: list[tuple[int, int]] = []  # (start, end inclusive) of each run of equal labels
    start = 0
    for i in range(1, n + 1):
        if i == n or labels[i] != labels[start]:
            runs.append((start, i - 1))
            start = i
    longest: dict[int, int] = {}
    for a, b in runs:
        longest[labels[a]] = max(longest.get(labels[a], 0), b - a + 1)
    out = list(labels)
    for a, b in runs:
        length = b - a + 1
        if longest[labels[a]] == 1 or length != longest[labels[a]]:
            out[a : b + 1] = [-1] * length
    i = 0
    while i < n:
        if out[i] != -1:
            i += 1
            continue
        start = i
        while i < n and out[i] == -1:
            i += 1
        end = i - 1
        left_label, left_len = None, 0
        if start > 0:
            left_label = out[start - 1]
            j = start - 1
            while j >= 0 and out[j] == left_label:
                j -= 1
            left_len = start - 1 - j
        right_label, right_len = None, 0
        if end < n - 1:
            right_label = out[end + 1]
            j = end + 1
            while j < n and out[j] == right_label:
                j += 1
            right_len = j - end - 1
        if left_len > right_len:
            label = left_label
        elif right_len > left_len:
            label = right_label
        else:
            label = left_label if left_label is not None else right_label
        out[start : end + 1] = [0 if label is None else label] * (end - start + 1)
    return out


def temporal_segments(
    x: torch.Tensor, ratio: float = DEFAULT_TEMPORAL_SEGMENT_RATIO, k: int = DEFAULT_KNN
) -> torch.Tensor:
    """Step 1: temporally contiguous segments from DPC-KNN on the frames' mean tokens.

    Args:
        x: ``(T, P, D)`` visual tokens.
        ratio: clusters per frame (``max(1, int(T * ratio))`` clusters).

    Returns:
        ``(T,)`` int64 segment id of each frame, 0-based and non-decreasing.
    """
    return torch.tensor(_segment_ids(x, ratio, k), dtype=torch.long, device=x.device)


def _segment_ids(x: torch.Tensor, ratio: float, k: int) -> list[int]:
    """:func:`temporal_segments` on the host (the refinement runs there: one read of the labels)."""
    num_frames = x.shape[0]
    num_clusters = max(1, int(num_frames * ratio))
    labels, _ = dpc_knn(x.float().mean(dim=1).unsqueeze(0), num_clusters, k)  # (1, T)
    refined = refine_clusters(labels[0].tolist())
    ids = [0]
    for before, now in zip(refined, refined[1:]):  # T frames, host ints
        ids.append(ids[-1] + (now != before))
    return ids


def static_slots(x: torch.Tensor, tau: float = DEFAULT_TAU) -> torch.Tensor:
    """Step 2: the slots whose tokens barely change over a segment.

    Args:
        x: ``(W, P, D)`` one segment's tokens.
        tau: a slot is static when the mean cosine similarity over all pairs of distinct frames is above it.

    Returns:
        ``(P,)`` bool; all False when W = 1.
    """
    frames = x.shape[0]
    if frames < 2:
        return torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
    unit = torch.nn.functional.normalize(x.float(), dim=-1)  # (W, P, D)
    total = unit.sum(dim=0)  # (P, D)
    pair_sum = (total * total).sum(dim=-1) - (unit * unit).sum(dim=(0, 2))  # (P,) sum over w != w'
    return pair_sum / (frames * (frames - 1)) > tau


def clustered_count(size: int, ratio: float) -> int:
    """Tokens left of a group of ``size`` after spatial clustering at ``ratio``: ``max(1, int(size * ratio))``
    clusters when the group has more than 14 tokens, all of them otherwise."""
    if size <= MIN_CLUSTERED_TOKENS:
        return size
    return min(size, max(1, int(size * ratio)))


def merged_count(sizes: list[int], ratio: float) -> int:
    """Tokens left of groups of ``sizes`` (0 for an empty group) after spatial clustering at ``ratio``."""
    return sum(clustered_count(n, ratio) for n in sizes if n)


def _ratio_bounds(sizes: list[int], above: Callable[[int], bool], low: float, steps: int) -> tuple[float, float]:
    """Bisect the cluster ratio in ``[low, 1]`` on the merged count, which grows with the ratio: the last
    ratio whose count is not ``above`` and the first one whose count is."""
    high = 1.0
    for _ in range(steps):
        mid = (low + high) / 2
        if above(merged_count(sizes, mid)):
            high = mid
        else:
            low = mid
    return low, high


def cluster_ratio_for(sizes: list[int], target: float, steps: int = 40) -> float:
    """The smallest cluster ratio in (0, 1] whose merged count ``sum_g clustered_count(n_g, ratio)`` reaches
    ``target`` tokens (bisection; 1 when even ratio 1 stays below it).

    Args:
        sizes: tokens of each group before spatial clustering (0 for an empty group).
        target: tokens the merge should leave.
    """
    if merged_count(sizes, 1.0) < target:
        return 1.0
    return _ratio_bounds(sizes, lambda count: count >= target, 0.0, steps)[1]


def cluster_ratio_at_most(sizes: list[int], most: int, steps: int = 40) -> float:
    """The largest cluster ratio in (0, 1] whose merged count stays at most ``most`` tokens (bisection); the
    smallest ratio tried (one cluster per clustered group) when even that count is above it."""
    smallest = 1e-9
    if merged_count(sizes, smallest) > most:
        return smallest
    return _ratio_bounds(sizes, lambda count: count > most, smallest, steps)[0]


def _cluster_targets(features: torch.Tensor, ratio: float, k: int) -> torch.Tensor:
    """For ``(B, n, D)`` groups, the index (0..n-1) of the cluster centre each token merges into: DPC-KNN
    with :func:`clustered_count` clusters, every token on its own when that is all of them."""
    batch, n, _ = features.shape
    num_clusters = clustered_count(n, ratio)
    if num_clusters >= n:
        return torch.arange(n, device=features.device).expand(batch, -1)
    labels, centers = dpc_knn(features, num_clusters, k)  # (B, n), (B, K)
    return centers.gather(1, labels)


def group_quotas(sizes: torch.Tensor, total: int) -> torch.Tensor:
    """Split ``total`` kept tokens over groups in proportion to their ``sizes`` (largest remainders).

    Args:
        sizes: ``(G,)`` int64 tokens per group.
        total: tokens to keep, ``0 <= total <= sizes.sum()``.

    Returns:
        ``(G,)`` int64 quotas, ``0 <= q_g <= n_g``, summing to ``total``; leftovers go to the largest
        fractional parts, ties to the lower group.
    """
    n = int(sizes.sum())
    if not 0 <= total <= n:
        raise ValueError(f"total must be in [0, {n}], got {total}")
    if n == 0:
        return torch.zeros_like(sizes)
    exact = sizes.double() * total / n  # (G,)
    quota = exact.floor().long()
    left = total - int(quota.sum())
    if left:
        order = torch.argsort(-(exact - quota.double()), stable=True)
        quota[order[:left]] += 1
    return quota


class PruneVid(PruningMethod):
    """PruneVid at relative budget ``budget``.

    Args:
        budget: relative token budget B in (0, 1].
        tau: static-token threshold (reference 0.8).
        alpha: the nominal layer-M keep ratio (reference 0.4) used to set the cluster ratio; the count
            actually kept at layer M is the one that makes the layer average B.
        temporal_segment_ratio: frame clusters per frame (reference 0.25).
        knn: k of DPC-KNN (reference 7).
        layer: M, the selection layer; default ``round(10 / 28 * L)``.
    """

    def __init__(
        self,
        budget: float = 0.3,
        tau: float = DEFAULT_TAU,
        alpha: float = DEFAULT_ALPHA,
        temporal_segment_ratio: float = DEFAULT_TEMPORAL_SEGMENT_RATIO,
        knn: int = DEFAULT_KNN,
        layer: int | None = None,
    ) -> None:
        self.name = "prunevid"
        self.budget = check_budget(budget)
        self.tau = check_unit_interval(tau, "tau")
        self.alpha = check_unit_interval(alpha, "alpha", closed=False)
        self.temporal_segment_ratio = check_unit_interval(temporal_segment_ratio, "temporal_segment_ratio")
        if not is_integer(knn) or knn < 1:
            raise ValueError(f"knn (DPC-KNN's k) must be an integer >= 1, got {knn!r}; the reference uses 7")
        self.knn = int(knn)
        if layer is not None and (not is_integer(layer) or layer < 1):
            raise ValueError(f"layer (PruneVid's M) must be an integer >= 1 or None, got {layer!r}")
        self.layer = None if layer is None else int(layer)

    def selection_layer(self, num_layers: int) -> int:
        """M for a decoder of ``num_layers`` layers (``round(10 / 28 * L)`` unless ``layer`` is set)."""
        layer = self.layer if self.layer is not None else round(REFERENCE_LAYER * num_layers / REFERENCE_DEPTH)
        layer = max(layer, 1)
        if layer >= num_layers:
            raise ValueError(f"PruneVid's selection layer {layer} must be below the decoder's {num_layers} layers")
        return layer

    def merged_fraction(self, num_layers: int) -> float:
        """``c_0 = min(1, B L / (M + alpha (L - M)))``: the fraction of the visual tokens the merge aims to keep."""
        m = self.selection_layer(num_layers)
        return min(1.0, self.budget * num_layers / (m + self.alpha * (num_layers - m)))

    def most_merged(self, num_layers: int, original: int) -> int:
        """The largest ``n_1`` that leaves layer M at least one of ``original`` tokens (may be below 1)."""
        layer = self.selection_layer(num_layers)
        # round((B L N_0 - M n_1) / (L - M)) >= 1  <=>  (B L N_0 - M n_1) / (L - M) > 1/2 (ties round to even)
        bound = (self.budget * num_layers * original - 0.5 * (num_layers - layer)) / layer
        return math.ceil(bound) - 1

    def selection_count(self, num_layers: int, original: int, merged: int) -> int:
        """Tokens layer M keeps when the merge left ``merged`` (n_1) of ``original`` (N_0) visual tokens:
        ``min(round((B L N_0 - M n_1) / (L - M)), n_1)``, which makes the layer average B.

        Raises:
            ValueError: when that count is below one, naming the smallest budget reachable on this video,
                ``(M n_1 + L - M) / (L N_0)`` (layer M keeping one token), and the ways to lower it.
        """
        layer = self.selection_layer(num_layers)
        allowed = self.budget * num_layers * original - layer * merged  # tokens left for layers [M, L)
        kept = round(allowed / (num_layers - layer))
        if kept < 1:
            smallest = (layer * merged + num_layers - layer) / (num_layers * original)
            raise ValueError(
                f"prunevid: budget {self.budget:g} cannot be reached on this video: its merge keeps {merged} of "
                f"{original} visual tokens (every group keeps at least one cluster, and groups of "
                f"{MIN_CLUSTERED_TOKENS} tokens or fewer are not clustered at all) "
                f"and layers [0, {layer}) of {num_layers} alone cost {layer * merged / (num_layers * original):.3f}"
                f", while layer {layer} keeps at least one token; the smallest budget reachable here is "
                f"{math.ceil(smallest * 1000 - 1e-9) / 1000:.3f}: use budget >= that, select earlier "
                f"(prunevid:layer=k with k < {layer}), or give the frames more tokens (a higher resolution)"
            )
        return min(kept, merged)

    def decision_layers(self, num_layers: int) -> list[int]:
        """Merging before layer 0 and selection at layer M; none at budget 1."""
        return [] if self.budget >= 1.0 else [0, self.selection_layer(num_layers)]

    def decide(self, layer: int, tokens: VideoTokens, state: dict) -> Decision:
        if layer == 0:
            return self._merge(tokens, state)
        return self._select(layer, tokens, state)

    def _merge(self, tokens: VideoTokens, state: dict) -> Decision:
        num_frames, num_slots = tokens.num_frames, tokens.num_slots
        x = tokens.grid("PruneVid's merging")  # (T, P, D)
        device = x.device
        frame_segment = _segment_ids(x, self.temporal_segment_ratio, self.knn)  # (T,) host ints
        firsts = [t for t in range(num_frames) if t == 0 or frame_segment[t] != frame_segment[t - 1]]
        spans = list(zip(firsts, firsts[1:] + [num_frames]))
        # (M, P) static slots of each segment: a few device operations per segment, each on a slice small
        # enough to stay in cache (one pass over the whole video, materialising its unit vectors, is slower
        # on the CPU); nothing is read back until all are known.
        static = torch.stack([static_slots(x[start:end], self.tau) for start, end in spans])
        num_static = static.sum(dim=1).tolist()  # one read from the device
        sizes: list[int] = []  # tokens of every group before spatial clustering
        for (start, end), count in zip(spans, num_static):
            sizes += [count] + [num_slots - count] * (end - start)
        num_layers = state["num_layers"]
        ratio = cluster_ratio_for(sizes, self.merged_fraction(num_layers) * tokens.num_tokens)
        most = self.most_merged(num_layers, tokens.num_tokens)
        if merged_count(sizes, ratio) > most:  # whole clusters overshot: cluster more
            ratio = cluster_ratio_at_most(sizes, most)
        flat = torch.arange(num_frames * num_slots, device=device).view(num_frames, num_slots)
        target = flat.clone()  # (T, P) flat index of the token each token merges into
        group = torch.empty(num_frames, num_slots, dtype=torch.long, device=device)
        # Each segment's static slots, then its dynamic ones, in slot order: split at the counts read above.
        slot_order = torch.argsort((~static).to(torch.uint8), dim=1, stable=True)  # (M, P)
        next_group = 0
        for (start, end), count, order in zip(spans, num_static, slot_order):  # segments: a few dozen at most
            span = x[start:end]  # (W, P, D)
            slots = order[:count]
            if count:
                centre = _cluster_targets(span[:, slots].float().mean(dim=0, keepdim=True), ratio, self.knn)[0]
                target[start:end, slots] = flat[start, slots[centre]]
                group[start:end, slots] = next_group
            slots = order[count:]
            if count < num_slots:
                centre = _cluster_targets(span[:, slots], ratio, self.knn)  # (W, n_d)
                target[start:end, slots] = flat[start:end].gather(1, slots[centre])
                group[start:end, slots] = next_group + 1 + torch.arange(end - start, device=device).unsqueeze(1)
            next_group += 1 + end - start
        merge_into = target.reshape(-1)
        keep = merge_into == flat.reshape(-1)
        self.selection_count(state["num_layers"], tokens.num_tokens, int(keep.sum()))  # refuses an unreachable B
        state.update(
            group=group.reshape(-1)[keep],
            num_groups=next_group,
            original=tokens.num_tokens,
            cluster_ratio=ratio,
            num_segments=len(spans),
        )
        return Decision(keep=keep, merge_into=merge_into)

    def _select(self, layer: int, tokens: VideoTokens, state: dict) -> Decision:
        if tokens.relevance_from_attention is None:
            raise ValueError(f"PruneVid selects by attention at layer {layer}; the runtime gave none")
        kept = self.selection_count(state["num_layers"], state["original"], tokens.num_tokens)
        query_rows = max(1, 0 if tokens.instruction is None else int(tokens.instruction.shape[0]))
        attention = tokens.relevance_from_attention(query_rows=query_rows)  # (N,)
        sizes = torch.bincount(state["group"], minlength=state["num_groups"])
        return Decision(keep=segment_top_k(attention, state["group"], group_quotas(sizes, kept)))

    def expected_tokens_per_layer(self, num_visual: int, num_layers: int) -> list[int] | None:
        return None  # data dependent (how much merges)


def create_prunevid(budget: float, **options: Any) -> PruningMethod:
    """Registry factory: ``PruneVid(budget, **options)``; options: ``tau`` (0.8), ``alpha`` (0.4),
    ``temporal_segment_ratio`` (0.25), ``knn`` (7), ``layer`` (M, default ``round(10 / 28 * L)``)."""
    allowed = {"tau", "alpha", "temporal_segment_ratio", "knn", "layer"}
    check_options("prunevid", options, allowed)
    return PruneVid(budget, **options)
