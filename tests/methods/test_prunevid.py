"""Tests of the PruneVid baseline (hieravid.methods.prunevid), against slow loop references."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from synthetic import planted_video
from tiny_models import QWEN_FAMILIES, build_inputs, video_token_id

import hieravid
from hieravid.methods.base import VideoTokens
from hieravid.methods.prunevid import (
    DEFAULT_KNN,
    PruneVid,
    cluster_ratio_for,
    clustered_count,
    create_prunevid,
    dpc_knn,
    group_quotas,
    refine_clusters,
    static_slots,
    temporal_segments,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def slow_dpc(points: list[list[float]], num_clusters: int, k: int) -> tuple[list[int], list[int]]:
    """DPC-KNN written from its definition, in plain Python (density ties to the lower index)."""
    n, c = len(points), len(points[0])
    d = [[math.dist(p, q) / math.sqrt(c) for q in points] for p in points]
    kk = min(k, n)
    density = [math.exp(-sum(v * v for v in sorted(row)[:kk]) / kk) for row in d]
    rank = {i: r for r, i in enumerate(sorted(range(n), key=lambda i: (-density[i], i)))}
    farthest = max(max(row) for row in d)
    delta = [min([d[i][j] for j in range(n) if rank[j] < rank[i]], default=farthest) for i in range(n)]
    centers = sorted(range(n), key=lambda i: (-delta[i] * density[i], i))[:num_clusters]
    labels = [min(range(num_clusters), key=lambda j: (d[centers[j]][i], j)) for i in range(n)]
    for j, centre in enumerate(centers):
        labels[centre] = j
    return labels, centers


def slow_quotas(sizes: list[int], total: int) -> list[int]:
    n = sum(sizes)
    exact = [s * total / n for s in sizes]
    quota = [math.floor(e) for e in exact]
    by_fraction = sorted(range(len(sizes)), key=lambda g: (-(exact[g] - quota[g]), g))
    for g in by_fraction[: total - sum(quota)]:
        quota[g] += 1
    return quota


def tokens_of(x: torch.Tensor, relevance=None) -> VideoTokens:
    num_frames, num_slots, dim = x.shape
    return VideoTokens(
        features=x.reshape(-1, dim), frame=torch.arange(num_frames).repeat_interleave(num_slots),
        slot=torch.arange(num_slots).repeat(num_frames), num_frames=num_frames, num_slots=num_slots,
        relevance_from_attention=relevance, instruction=torch.zeros(5, dim),
    )


def static_dynamic_video(seed: int, num_frames: int, num_static: int, num_dynamic: int, dim: int = 16):
    """Slots ``[0, num_static)`` repeat one token (+1e-3 noise) in every frame; the others are random."""
    gen = torch.Generator().manual_seed(seed)
    static = torch.randn(1, num_static, dim, generator=gen)
    static = static + 1e-3 * torch.randn(num_frames, num_static, dim, generator=gen)
    dynamic = torch.randn(num_frames, num_dynamic, dim, generator=gen)
    return torch.cat([static, dynamic], dim=1)


# ------------------------------------------------------------------------------------------ DPC-KNN


@pytest.mark.parametrize("seed", range(12))
def test_dpc_knn_matches_the_definition(seed):
    gen = torch.Generator().manual_seed(seed)
    batch, n = 3, 5 + seed * 3
    x = torch.randn(batch, n, 8, generator=gen) + 3 * torch.randn(batch, n, 1, generator=gen).round()
    num_clusters = 1 + seed % n
    labels, centers = dpc_knn(x.double(), num_clusters, k=7)
    for b in range(batch):
        ref_labels, ref_centers = slow_dpc(x[b].double().tolist(), num_clusters, 7)
        assert centers[b].tolist() == ref_centers
        assert labels[b].tolist() == ref_labels


def test_dpc_knn_finds_planted_clusters():
    gen = torch.Generator().manual_seed(0)
    means = 10 * torch.randn(4, 16, generator=gen)
    members = means.repeat_interleave(6, dim=0) + 0.1 * torch.randn(24, 16, generator=gen)
    labels, _ = dpc_knn(members[torch.randperm(24, generator=gen)].unsqueeze(0), 4, k=5)
    assert sorted(torch.bincount(labels[0]).tolist()) == [6, 6, 6, 6]


@pytest.mark.parametrize("scale", [30.0, 40.0])
def test_dpc_knn_follows_the_definition_where_float32_densities_underflow(scale):
    """Far-apart features: exp(-mean d^2) is 0 in float32 past mean d^2 ~ 104 (in float64 past ~745), and
    a density of 0 for every token would leave the centres to the index tie-break."""
    gen = torch.Generator().manual_seed(0)
    truth = torch.arange(40) // 10  # four clusters of ten tokens
    x = scale * ((3 * torch.randn(4, 64, generator=gen))[truth] + 0.3 * torch.randn(40, 64, generator=gen))
    labels, centers = dpc_knn(x.unsqueeze(0), 4)
    ref_labels, ref_centers = slow_dpc(x.double().tolist(), 4, DEFAULT_KNN)
    assert (centers[0].tolist(), labels[0].tolist()) == (ref_centers, ref_labels)
    assert len(set(truth[centers[0]].tolist())) > 1


def test_dpc_knn_checks_the_cluster_count():
    with pytest.raises(ValueError, match="num_clusters"):
        dpc_knn(torch.randn(1, 3, 2), 4)


# ------------------------------------------------------------------------------------------ segments


@pytest.mark.parametrize(
    "labels, refined",
    [
        ([0, 0, 1, 0, 0, 0, 2, 2], [0, 0, 0, 0, 0, 0, 2, 2]),  # a short run of 0 and a lone 1 join the longer 0s
        ([0, 1, 0, 1], [0, 0, 0, 0]),  # no run longer than 1: everything is relabelled, to 0
        ([0, 0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0]),  # the shorter run of 0 joins its only neighbour
        ([2, 2, 1, 2, 2], [2, 2, 2, 2, 2]),  # both longest runs of 2 stay; a tie takes the left neighbour
        ([0, 1, 1, 2, 2, 2, 1], [1, 1, 1, 2, 2, 2, 2]),
        ([3], [0]),
    ],
)
def test_refine_clusters(labels, refined):
    assert refine_clusters(labels) == refined


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("cuts", [[4, 8, 12], [3, 9, 11], [2, 10, 13]])
def test_temporal_segments_find_planted_scenes(seed, cuts):
    x, expected = planted_video(seed, 16, cuts, 6)  # int(16 * 0.25) = 4 clusters for 4 scenes
    assert temporal_segments(x).tolist() == expected


@pytest.mark.parametrize("seed", range(4))
def test_a_one_frame_scene_joins_its_longer_neighbour(seed):
    x, _ = planted_video(seed, 16, [6, 7, 10], 6)  # scenes 0-5, 6, 7-9, 10-15
    assert temporal_segments(x).tolist() == [0] * 7 + [1] * 3 + [2] * 6


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), frames=st.integers(1, 6), slots=st.integers(1, 5), tau=st.floats(-1, 1))
def test_static_slots_match_the_mean_pairwise_similarity(seed, frames, slots, tau):
    x = torch.randn(frames, slots, 4, generator=torch.Generator().manual_seed(seed))
    got = static_slots(x, tau).tolist()
    for p in range(slots):
        pairs = [(a, b) for a in range(frames) for b in range(frames) if a != b]
        if not pairs:
            assert got[p] is False
            continue
        mean = sum(float(torch.nn.functional.cosine_similarity(x[a, p], x[b, p], dim=0)) for a, b in pairs) / len(pairs)
        if abs(mean - tau) > 1e-5:
            assert got[p] == (mean > tau)


# ------------------------------------------------------------------------------------------ budget helpers


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 30), min_size=1, max_size=8), data=st.data())
def test_group_quotas(sizes, data):
    total = data.draw(st.integers(0, sum(sizes)))
    got = group_quotas(torch.tensor(sizes), total).tolist()
    assert got == (slow_quotas(sizes, total) if sum(sizes) else [0] * len(sizes))
    assert sum(got) == total and all(0 <= q <= s for q, s in zip(got, sizes))


def test_cluster_ratio_reaches_the_target_with_the_smallest_ratio():
    sizes = [40, 20, 20, 10]  # the group of 10 is never clustered
    ratio = cluster_ratio_for(sizes, 45)
    merged = sum(clustered_count(n, ratio) for n in sizes)
    assert merged >= 45
    assert sum(clustered_count(n, ratio - 1e-9) for n in sizes) < 45
    assert cluster_ratio_for(sizes, 1000) == 1.0  # unreachable: no spatial clustering
    assert clustered_count(14, 0.1) == 14 and clustered_count(15, 0.1) == 1 and clustered_count(20, 0.5) == 10


# ------------------------------------------------------------------------------------------ the decisions


def test_static_slots_merge_over_time_and_small_groups_are_not_clustered():
    x = static_dynamic_video(0, 4, 8, 12)  # T = 4: int(4 * 0.25) = 1 cluster, one segment
    state = {"num_layers": 28}
    decision = PruneVid(0.3).decide(0, tokens_of(x), state)
    keep = decision.keep.view(4, 20)
    assert keep[0].all() and not keep[1:, :8].any() and keep[1:, 8:].all()  # 8 + 4 * 12 tokens
    expected = torch.arange(80).view(4, 20)
    expected[:, :8] = torch.arange(8)  # every static token merges into frame 0's token of its slot
    assert decision.merge_into.tolist() == expected.reshape(-1).tolist()
    assert state["num_segments"] == 1
    assert state["group"].tolist() == [0] * 8 + [g for g in (1, 2, 3, 4) for _ in range(12)]


def test_clusters_follow_dpc_knn_inside_each_group():
    x = static_dynamic_video(1, 4, 20, 20)  # P = 40; groups of 20 > 14 are clustered
    method, state = PruneVid(0.2), {"num_layers": 28}
    decision = method.decide(0, tokens_of(x), state)
    ratio = state["cluster_ratio"]
    # five groups of 20 (the static one, four frames of dynamic tokens) must reach 0.326 * 160 = 52.1
    assert ratio == cluster_ratio_for([20, 20, 20, 20, 20], method.merged_fraction(28) * 160)
    clusters = clustered_count(20, ratio)
    assert clusters == 11
    target = decision.merge_into.view(4, 40)
    # static: DPC-KNN on the time-averaged static tokens; each cluster sits at frame 0, at its centre's slot
    labels, centers = slow_dpc(x[:, :20].double().mean(dim=0).tolist(), clusters, 7)
    for t in range(4):
        assert target[t, :20].tolist() == [centers[label] for label in labels]
    # dynamic: DPC-KNN frame by frame; each cluster sits at its centre token in that frame
    for t in range(4):
        labels, centers = slow_dpc(x[t, 20:].double().tolist(), clusters, 7)
        assert target[t, 20:].tolist() == [t * 40 + 20 + centers[label] for label in labels]
    assert int(decision.keep.sum()) == clusters * 5


def test_merges_stay_inside_their_segment():
    x, _ = planted_video(2, 16, [5, 11], 20, noise=0.5)
    segment = temporal_segments(x)
    state = {"num_layers": 28}
    decision = PruneVid(0.3).decide(0, tokens_of(x), state)
    frame = torch.arange(16).repeat_interleave(20)
    assert torch.equal(segment[frame[decision.merge_into]], segment[frame])
    assert state["num_segments"] == int(segment.max()) + 1


def test_selection_keeps_the_budget_and_the_best_tokens_of_each_group():
    x = static_dynamic_video(3, 4, 8, 12)
    gen = torch.Generator().manual_seed(3)
    score = torch.rand(4 * 20, generator=gen)
    method, state = PruneVid(0.3), {"num_layers": 28}
    decision = method.decide(0, tokens_of(x), state)
    kept_index = torch.nonzero(decision.keep).squeeze(1)
    n1 = kept_index.numel()  # 56
    rows = []
    present = tokens_of(x[:1])  # features are not used by the selection
    present = VideoTokens(
        features=torch.zeros(n1, 16), frame=present.frame[:0], slot=present.slot[:0], num_frames=4, num_slots=20,
        relevance_from_attention=lambda query_rows=1: rows.append(query_rows) or score[kept_index],
        instruction=torch.zeros(5, 16),
    )
    assert method.decision_layers(28) == [0, 10]
    keep = method.decide(10, present, state).keep
    kept = round((0.3 * 28 * 80 - 10 * n1) / 18)
    assert int(keep.sum()) == kept
    assert rows == [5]  # the five text tokens after the video are the queries
    groups = [list(range(8))] + [list(range(8 + 12 * f, 20 + 12 * f)) for f in range(4)]
    quotas = slow_quotas([len(g) for g in groups], kept)
    s = score[kept_index].tolist()
    for members, quota in zip(groups, quotas):
        best = sorted(members, key=lambda i: (-s[i], i))[:quota]
        assert sorted(i for i in members if keep[i]) == sorted(best)


def simulate(method, x: torch.Tensor, num_layers: int) -> list[int]:
    """Tokens entering each layer when the decisions are applied (relevance: a fixed random score)."""
    tokens = tokens_of(x)
    score = torch.rand(tokens.num_tokens, generator=torch.Generator().manual_seed(0))
    state = {"num_layers": num_layers}
    first, selection = method.decision_layers(num_layers)
    merged = method.decide(first, tokens, state)
    kept_index = torch.nonzero(merged.keep).squeeze(1)
    later = VideoTokens(
        features=tokens.features[kept_index], frame=tokens.frame[kept_index], slot=tokens.slot[kept_index],
        num_frames=x.shape[0], num_slots=x.shape[1],
        relevance_from_attention=lambda query_rows=1: score[kept_index], instruction=torch.zeros(2, x.shape[2]),
    )
    kept = int(method.decide(selection, later, state).keep.sum())
    return [kept_index.numel()] * selection + [kept] * (num_layers - selection)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    num_frames=st.integers(2, 12),
    num_slots=st.integers(15, 40),
    num_layers=st.integers(8, 36),
    budget=st.floats(0.1, 0.95),
    noise=st.sampled_from([0.01, 0.3, 1.0, 3.0]),
)
def test_layer_average_is_the_budget(seed, num_frames, num_slots, num_layers, budget, noise):
    x, _ = planted_video(seed, num_frames, [num_frames // 2], num_slots, dim=16, noise=noise)
    method = PruneVid(budget)
    n0, m = num_frames * num_slots, method.selection_layer(num_layers)
    try:
        counts = simulate(method, x, num_layers)
    except ValueError as err:  # refused only when layer M would keep no token
        merged, original = map(int, re.search(r"merge keeps (\d+) of (\d+)", str(err)).groups())
        assert original == n0 and round((budget * num_layers * n0 - m * merged) / (num_layers - m)) < 1
        return
    assert counts[m] >= 1
    if counts[-1] == counts[0] and counts[0] < budget * n0:
        return  # the temporal merge alone went below the budget (documented): nothing left to prune
    assert counts[0] * m <= budget * num_layers * n0  # the merge leaves room for layer M
    assert abs(sum(counts) - budget * num_layers * n0) <= 0.5 * (num_layers - m) + 1e-9


def test_a_budget_the_merge_leaves_no_room_for_is_refused_with_the_smallest_reachable_one():
    # 9 random tokens per frame: no static slot and no group above 14 tokens, so the merge keeps all 72, and
    # layers [0, 3) of 8 alone cost 3/8 (before the fix layer 3 kept 0 tokens and the average was 0.375)
    x = torch.randn(8, 9, 16, generator=torch.Generator().manual_seed(0))
    for budget in (0.3, 0.05, 0.379):  # 0.379: layer 3 would keep round(0.46) = 0
        with pytest.raises(ValueError, match=r"keeps 72 of 72 .* smallest budget reachable here is 0\.384: use budget"):
            PruneVid(budget).decide(0, tokens_of(x), {"num_layers": 8})
    smallest = (3 * 72 + 5) / (8 * 72)  # layer 3 keeps one token
    for method in (PruneVid(0.384), PruneVid(smallest), PruneVid(0.3, layer=2)):
        counts = simulate(method, x, 8)
        m = method.selection_layer(8)
        assert counts[:m] == [72] * m and counts[m] >= 1
        assert abs(sum(counts) - method.budget * 8 * 72) <= 0.5 * (8 - m) + 1e-9
    assert simulate(PruneVid(smallest), x, 8)[3] == 1


def test_options_and_layer():
    assert PruneVid(0.3).selection_layer(28) == 10
    assert PruneVid(0.3).selection_layer(8) == 3
    assert PruneVid(0.3, layer=5).decision_layers(28) == [0, 5]
    assert PruneVid(1.0).decision_layers(28) == []
    assert PruneVid(0.3).merged_fraction(28) == pytest.approx(0.3 * 28 / (10 + 0.4 * 18))
    with pytest.raises(ValueError, match="below the decoder"):
        PruneVid(0.3, layer=8).selection_layer(8)
    with pytest.raises(ValueError, match="unknown option"):
        create_prunevid(0.3, cluster_ratio=0.5)
    with pytest.raises(ValueError, match="knn"):
        PruneVid(0.3, knn=0)
    assert create_prunevid(0.3, tau=0.7).tau == 0.7


# ------------------------------------------------------------------------------------------ on a model


def test_on_a_model_the_budget_is_met_and_text_stays(family, model):
    inputs = build_inputs(family, model, batch=2, prompt_tokens=[8, 5], left_pad=[0, 1], seed=3)
    method = PruneVid(0.4)
    with torch.no_grad(), hieravid.apply(model, method) as handle:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    stats = handle.last_stats
    m = method.selection_layer(8)
    for b, rows in enumerate(stats.per_sample_tokens_per_layer):
        n0 = stats.visual_tokens[b]
        assert rows[:m] == [rows[0]] * m and rows[m:] == [rows[m]] * (8 - m)
        assert abs(sum(rows) - 0.4 * 8 * n0) <= 0.5 * (8 - m)
        valid = inputs["attention_mask"][b].bool()
        text = torch.nonzero(valid & (inputs["input_ids"][b] != video_token_id(family, model))).squeeze(1)
        assert all(torch.isin(text, layer[b]).all() for layer in stats.kept_positions)
    assert stats.per_sample_segments == [1, 1]  # 4 or 8 frames: int(T / 4) <= 2 clusters, random video


def test_on_a_model_small_frames_refuse_an_unreachable_budget(family, model):
    if family not in QWEN_FAMILIES:
        pytest.skip("LLaVA-OneVision frames have a fixed 25 tokens")
    vision = model.config.vision_config
    side = 3 * vision.patch_size * vision.spatial_merge_size  # 3 x 3 = 9 tokens per temporal group, 4 groups
    inputs = build_inputs(family, model, frames=8, height=side, width=side, seed=0)
    for budget in (0.3, 0.05):  # before the fix: [36, 36, 36, 0, 0, 0, 0, 0], achieved 0.375
        with pytest.raises(ValueError, match=r"keeps 36 of 36 .* smallest budget reachable here is 0\.393"):
            with torch.no_grad(), hieravid.apply(model, "prunevid", budget):
                model.generate(**inputs, max_new_tokens=1, do_sample=False)
    with torch.no_grad(), hieravid.apply(model, "prunevid", 0.393) as handle:
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
    rows = handle.last_stats.per_sample_tokens_per_layer[0]
    assert rows == [36] * 3 + [1] * 5  # round((0.393 * 8 * 36 - 3 * 36) / 5) = 1
    assert 0.39 <= handle.last_stats.achieved_budget <= 0.393 + 0.5 * 5 / (8 * 36)


def test_the_budgets_refused_on_a_video_are_those_below_the_minimum_it_names():
    """A merge whose count rounds up past what leaves layer M a token keeps fewer clusters instead, so a
    budget is refused only below the smallest the video allows (one cluster per group), and the refusal
    names a budget that is accepted."""
    from tiny_models import build_model

    model = build_model("llava_onevision", num_layers=28)
    inputs = build_inputs("llava_onevision", model, frames=1, seed=1)  # one frame of 25 tokens: clustered
    accepted, named = [], set()
    for budget in [round(0.010 + 0.002 * i, 3) for i in range(40)]:
        try:
            with torch.no_grad(), hieravid.apply(model, "prunevid", budget) as handle:
                model(**inputs)
            accepted.append(budget)
            assert handle.last_stats.per_sample_tokens_per_layer[0][10] >= 1
        except ValueError as err:
            assert not accepted, f"{budget} refused after {accepted[-1]} was accepted"
            named.add(float(re.search(r"smallest budget reachable here is ([0-9.]+)", str(err)).group(1)))
    assert accepted and len(named) == 1 and round(named.pop(), 3) in accepted


def test_the_merge_reads_the_device_as_often_whatever_the_number_of_segments():
    """Stage 1 reads values back (each a GPU stall) a fixed number of times, not once or more per segment."""
    from device_reads import DeviceReads

    reads, segments = [], []
    for cuts in ([8], [2, 4, 6, 8, 10, 12, 14]):
        x, _ = planted_video(4, 16, cuts, 20, noise=0.01)
        state = {"num_layers": 28}
        with DeviceReads() as counter:
            PruneVid(0.3).decide(0, tokens_of(x), state)
        reads.append(len(counter.reads))
        segments.append(state["num_segments"])
    assert segments[0] < segments[1]
    assert reads[0] == reads[1], f"device reads with {segments[0]} segments vs {segments[1]}: {reads}"
