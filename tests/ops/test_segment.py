"""Tests of hieravid.ops.segment: Eq. 1 (same-slot similarity), the merge set of Eq. 3 and Eq. 2
(segmentation). Every reference here is a slow Python loop written for the test."""

from __future__ import annotations

import math

import pytest
import torch
from synthetic import planted_video
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hieravid.ops.segment import merge_count, merge_set, same_slot_similarity, segment_ids

NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------------
# Slow references
# --------------------------------------------------------------------------------------------------


def ref_similarity(x: torch.Tensor) -> list[list[float]]:
    """Eq. 1 with math on Python lists: cosine with the same slot of the previous frame."""
    data = x.double().tolist()  # [T][P][D]
    out = []
    for t in range(len(data)):
        row = []
        for p in range(len(data[t])):
            if t == 0:
                row.append(NEG_INF)
                continue
            a, b = data[t][p], data[t - 1][p]
            na = math.sqrt(sum(v * v for v in a))
            nb = math.sqrt(sum(v * v for v in b))
            if na == 0.0 or nb == 0.0 or math.isnan(na) or math.isnan(nb):
                row.append(NEG_INF)
                continue
            row.append(sum(u * v for u, v in zip(a, b)) / (na * nb))
        out.append(row)
    return out


def ref_merge_set(scores: list[list[float]], k: int) -> set[tuple[int, int]]:
    """Top-k candidates (frames >= 1) by score, ties to the earlier sequence index t*P + p."""
    num_slots = len(scores[0])
    candidates = [(t, p) for t in range(1, len(scores)) for p in range(num_slots)]
    candidates.sort(key=lambda tp: (-scores[tp[0]][tp[1]], tp[0] * num_slots + tp[1]))
    return set(candidates[:k])


def ids_from_cuts(cut_after: list[bool]) -> list[int]:
    """Segment id per frame, given for frames 1..T-1 whether a new segment starts there."""
    ids = [0]
    for cut in cut_after:
        ids.append(ids[-1] + (1 if cut else 0))
    return ids


def ref_overlap_topk(mask: torch.Tensor, beta: float) -> list[int]:
    """Eq. 2 with the Top-K indicator: O^t = (1/P) sum_p 1[(t, p) in M]."""
    rows = mask.tolist()
    cuts = []
    for t in range(1, len(rows)):
        overlap = sum(1 for v in rows[t] if v) / len(rows[t])
        cuts.append(overlap < beta)
    return ids_from_cuts(cuts)


def ref_overlap_tau(sim: torch.Tensor, tau: float, beta: float) -> list[int]:
    rows = sim.tolist()
    cuts = []
    for t in range(1, len(rows)):
        overlap = sum(1 for v in rows[t] if v > tau) / len(rows[t])
        cuts.append(overlap < beta)
    return ids_from_cuts(cuts)


@st.composite
def planted_scenes(draw):
    num_frames = draw(st.integers(1, 12))
    num_scenes = draw(st.integers(1, min(num_frames, 5)))
    cuts = sorted(draw(st.lists(st.integers(1, num_frames - 1), min_size=num_scenes - 1,
                                max_size=num_scenes - 1, unique=True))) if num_frames > 1 else []
    num_slots = draw(st.integers(3, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    return num_frames, cuts, num_slots, seed


# --------------------------------------------------------------------------------------------------
# same_slot_similarity (Eq. 1)
# --------------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    num_frames=st.integers(1, 5),
    num_slots=st.integers(1, 4),
    dim=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
    zero_fraction=st.sampled_from([0.0, 0.2, 0.5]),
)
def test_similarity_matches_loop_reference(num_frames, num_slots, dim, seed, zero_fraction):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_frames, num_slots, dim, generator=gen)
    zero = torch.rand(num_frames, num_slots, generator=gen) < zero_fraction
    x[zero] = 0.0
    sim = same_slot_similarity(x)
    assert sim.shape == (num_frames, num_slots)
    assert sim.dtype == torch.float32
    assert not torch.isnan(sim).any()
    ref = ref_similarity(x)
    for t in range(num_frames):
        for p in range(num_slots):
            got, want = float(sim[t, p]), ref[t][p]
            if want == NEG_INF:
                assert got == NEG_INF, (t, p, got)
            else:
                assert got == pytest.approx(want, abs=1e-5), (t, p)


def test_similarity_frame0_and_zero_norm_are_neg_inf():
    x = torch.randn(3, 2, 4)
    x[1, 0] = 0.0  # zero token: both (1, 0) and (2, 0) lose their cosine
    sim = same_slot_similarity(x)
    assert torch.all(sim[0] == NEG_INF)
    assert sim[1, 0] == NEG_INF and sim[2, 0] == NEG_INF
    assert torch.isfinite(sim[1:, 1]).all()


def test_similarity_nan_features_give_neg_inf_not_nan():
    x = torch.randn(3, 2, 4)
    x[2, 1, 0] = float("nan")
    sim = same_slot_similarity(x)
    assert not torch.isnan(sim).any()
    assert sim[2, 1] == NEG_INF
    assert torch.isfinite(sim[1:, 0]).all() and torch.isfinite(sim[1, 1])


def test_similarity_bf16_input_is_float32_and_close():
    x = torch.randn(4, 3, 8).to(torch.bfloat16)
    sim = same_slot_similarity(x)
    assert sim.dtype == torch.float32
    ref = ref_similarity(x)  # reference on the bf16 values themselves
    for t in range(1, 4):
        for p in range(3):
            assert float(sim[t, p]) == pytest.approx(ref[t][p], abs=1e-5)


def test_similarity_identical_and_opposite_tokens():
    base = torch.randn(1, 3, 5)
    x = torch.cat([base, base, -base])
    sim = same_slot_similarity(x)
    torch.testing.assert_close(sim[1], torch.ones(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(sim[2], -torch.ones(3), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", [(3, 4), (0, 2, 3), (2, 0, 3), (1, 2, 3, 4)])
def test_similarity_rejects_bad_shapes(shape):
    with pytest.raises(ValueError):
        same_slot_similarity(torch.zeros(shape))


# --------------------------------------------------------------------------------------------------
# merge_count
# --------------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    num_frames=st.integers(1, 70),
    num_slots=st.integers(1, 220),
    # Dyadic ratios are exact in binary, so floor(rho * T * P) has one value whatever the association.
    numerator=st.integers(0, 63),
)
def test_merge_count_is_floor_capped(num_frames, num_slots, numerator):
    rho = numerator / 64
    want = min(math.floor(rho * (num_frames * num_slots)), (num_frames - 1) * num_slots)
    assert merge_count(num_frames, num_slots, rho) == want


@pytest.mark.parametrize(
    ("num_frames", "num_slots", "rho", "want"),
    [(10, 4, 0.5, 20), (10, 4, 0.3, 12), (4, 169, 0.7, 473), (64, 169, 0.7, 7571), (32, 196, 0.5, 3136),
     (10, 9, 0.7, 63), (20, 9, 0.7, 126)],  # 0.7 * 90 is 62.99999999999999 in floats
)
def test_merge_count_examples(num_frames, num_slots, rho, want):
    assert merge_count(num_frames, num_slots, rho) == want


@pytest.mark.parametrize(("num_frames", "num_slots", "rho"), [(29, 100, 0.3), (29, 210, 0.7), (29, 100, 0.01)])
def test_merge_count_agrees_with_floor_of_rho_times_num_tokens(num_frames, num_slots, rho):
    from hieravid.schedule import pruned_count

    n_v = num_frames * num_slots
    assert merge_count(num_frames, num_slots, rho) == math.floor(rho * n_v) == pruned_count(rho, n_v)


def test_merge_count_cap_and_one_frame():
    assert merge_count(2, 5, 0.9) == 5  # floor(9) capped at (T-1)*P = 5
    assert merge_count(3, 4, 0.75) == 8  # floor(9) capped at 8
    assert merge_count(1, 196, 0.7) == 0
    assert merge_count(1, 196, 0.0) == 0
    assert merge_count(5, 5, 0.0) == 0


@pytest.mark.parametrize("rho", [1.0, 1.5, -0.1, float("nan"), float("inf")])
def test_merge_count_bad_rho_names_rho(rho):
    with pytest.raises(ValueError, match="rho"):
        merge_count(4, 4, rho)


# --------------------------------------------------------------------------------------------------
# merge_set
# --------------------------------------------------------------------------------------------------


@st.composite
def score_grids(draw, finite=True):
    num_frames = draw(st.integers(2, 6))
    num_slots = draw(st.integers(1, 5))
    # A few distinct values so that ties are common.
    values = st.sampled_from([-1.0, -0.25, 0.0, 0.5, 0.5, 0.9, 1.0]) if finite else st.sampled_from(
        [NEG_INF, -1.0, 0.0, 0.5, 1.0]
    )
    rows = [[NEG_INF] * num_slots] + [
        [draw(values) for _ in range(num_slots)] for _ in range(num_frames - 1)
    ]
    k = draw(st.integers(0, (num_frames - 1) * num_slots))
    return rows, k


@settings(max_examples=80, deadline=None)
@given(data=score_grids())
def test_merge_set_matches_reference_with_ties(data):
    rows, k = data
    sim = torch.tensor(rows, dtype=torch.float32)
    mask = merge_set(sim, k)
    assert mask.dtype == torch.bool and mask.shape == sim.shape
    assert int(mask.sum()) == k
    assert not mask[0].any()
    got = {(t, p) for t, p in torch.nonzero(mask).tolist()}
    assert got == ref_merge_set(rows, k)
    # Every picked candidate scores at least as high as every unpicked one.
    picked = [rows[t][p] for t, p in got]
    unpicked = [rows[t][p] for t in range(1, len(rows)) for p in range(len(rows[0])) if (t, p) not in got]
    if picked and unpicked:
        assert min(picked) >= max(unpicked)
    # Deterministic.
    assert torch.equal(merge_set(sim, k), mask)


def test_merge_set_ties_go_to_earlier_sequence_index():
    sim = torch.tensor([[NEG_INF, NEG_INF, NEG_INF], [0.5, 0.7, 0.5], [0.5, 0.5, 0.7]])
    mask = merge_set(sim, 4)
    # 0.7 at (1, 1) and (2, 2); then the earliest 0.5s: (1, 0) and (1, 2).
    assert mask.tolist() == [[False, False, False], [True, True, True], [False, False, True]]


def test_merge_set_full_and_empty():
    sim = same_slot_similarity(torch.randn(4, 3, 8))
    assert not merge_set(sim, 0).any()
    full = merge_set(sim, 9)
    assert not full[0].any() and full[1:].all()


@pytest.mark.parametrize("k", [-1, 10])
def test_merge_set_rejects_bad_k(k):
    with pytest.raises(ValueError):
        merge_set(torch.zeros(4, 3), k)


def test_merge_set_never_picks_frame0_even_when_candidates_are_neg_inf():
    x = torch.randn(2, 3, 4)
    x[1, 0] = 0.0  # a zero-norm token: its similarity is -inf, like frame 0's
    sim = same_slot_similarity(x)
    k = merge_count(2, 3, 0.5)  # = 3 = every candidate
    mask = merge_set(sim, k)
    assert int(mask.sum()) == 3
    assert not mask[0].any()
    assert mask[1].all()


# --------------------------------------------------------------------------------------------------
# segment_ids (Eq. 2)
# --------------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(scene=planted_scenes())
def test_segment_ids_find_planted_cuts_merge_ratio_tau(scene):
    num_frames, cuts, num_slots, seed = scene
    x, expected = planted_video(seed, num_frames, cuts, num_slots)
    ids = segment_ids(x, method="merge_ratio", indicator="tau")
    assert ids.dtype == torch.long and ids.shape == (num_frames,)
    assert ids.tolist() == expected
    # Passing the precomputed similarity gives the same answer.
    assert segment_ids(x, similarity=same_slot_similarity(x)).tolist() == expected


@settings(max_examples=40, deadline=None)
@given(scene=planted_scenes())
def test_segment_ids_find_planted_cuts_avgpool(scene):
    num_frames, cuts, num_slots, seed = scene
    x, expected = planted_video(seed, num_frames, cuts, num_slots)
    assert segment_ids(x, method="avgpool").tolist() == expected


@settings(max_examples=25, deadline=None)
@given(scene=planted_scenes())
def test_segment_ids_find_planted_cuts_merge_ratio_topk(scene):
    # The Top-K indicator on a realistic merge set (rho = 1/2), against the loop reference of O^t.
    num_frames, cuts, num_slots, seed = scene
    x, _ = planted_video(seed, num_frames, cuts, num_slots)
    sim = same_slot_similarity(x)
    mask = merge_set(sim, merge_count(num_frames, num_slots, 0.5))
    got = segment_ids(x, method="merge_ratio", indicator="topk", merge_mask=mask, beta=0.4)
    assert got.tolist() == ref_overlap_topk(mask, 0.4)


@settings(max_examples=60, deadline=None)
@given(
    num_frames=st.integers(2, 8),
    num_slots=st.integers(1, 6),
    bits=st.data(),
    beta=st.sampled_from([0.0, 0.2, 0.25, 0.4, 0.5, 0.6, 0.75, 1.0]),
)
def test_segment_ids_topk_indicator_matches_loop(num_frames, num_slots, bits, beta):
    rows = [[False] * num_slots] + [
        bits.draw(st.lists(st.booleans(), min_size=num_slots, max_size=num_slots)) for _ in range(num_frames - 1)
    ]
    mask = torch.tensor(rows)
    x = torch.randn(num_frames, num_slots, 3)
    got = segment_ids(x, method="merge_ratio", indicator="topk", merge_mask=mask, beta=beta)
    assert got.tolist() == ref_overlap_topk(mask, beta)


@settings(max_examples=60, deadline=None)
@given(
    num_frames=st.integers(2, 8),
    num_slots=st.integers(1, 6),
    data=st.data(),
    tau=st.sampled_from([0.3, 0.6, 0.8]),
    beta=st.sampled_from([0.2, 0.4, 0.5, 0.7]),
)
def test_segment_ids_tau_indicator_matches_loop(num_frames, num_slots, data, tau, beta):
    values = st.sampled_from([NEG_INF, -0.5, 0.0, 0.25, 0.55, 0.65, 0.79, 0.81, 1.0])
    rows = [[NEG_INF] * num_slots] + [
        data.draw(st.lists(values, min_size=num_slots, max_size=num_slots)) for _ in range(num_frames - 1)
    ]
    sim = torch.tensor(rows, dtype=torch.float32)
    x = torch.randn(num_frames, num_slots, 3)
    got = segment_ids(x, method="merge_ratio", similarity=sim, tau=tau, beta=beta)
    assert got.tolist() == ref_overlap_tau(sim, tau, beta)


def ref_avgpool(x: torch.Tensor, threshold: float) -> list[int]:
    """Cosine of mean-pooled adjacent frames, a cut where it is below the threshold (Python floats)."""
    data = x.double().tolist()
    pooled = [[sum(tok[c] for tok in frame) / len(frame) for c in range(len(frame[0]))] for frame in data]
    cuts = []
    for t in range(1, len(pooled)):
        a, b = pooled[t], pooled[t - 1]
        cos = sum(u * v for u, v in zip(a, b)) / (math.sqrt(sum(u * u for u in a)) * math.sqrt(sum(v * v for v in b)))
        cuts.append(cos < threshold)
    return ids_from_cuts(cuts)


@settings(max_examples=40, deadline=None)
@given(
    num_frames=st.integers(2, 8),
    num_slots=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    threshold=st.sampled_from([0.0, 0.5, 0.8, 0.95]),
)
def test_segment_ids_avgpool_matches_loop(num_frames, num_slots, seed, threshold):
    gen = torch.Generator().manual_seed(seed)
    # A slowly drifting video: adjacent pooled cosines spread over (0, 1), so thresholds matter.
    x = torch.randn(1, num_slots, 3, generator=gen) + 0.6 * torch.randn(num_frames, num_slots, 3, generator=gen)
    got = segment_ids(x, method="avgpool", avgpool_threshold=threshold)
    pooled = x.double().mean(dim=1)
    cos = torch.nn.functional.cosine_similarity(pooled[1:], pooled[:-1], dim=-1)
    assume(bool(((cos - threshold).abs() > 1e-5).all()))  # float32 vs float64 at the threshold
    assert got.tolist() == ref_avgpool(x, threshold)


def test_segment_ids_avgpool_default_threshold_is_095():
    # P = 1, D = 2: adjacent cosines 0.97 (no cut), 0.9 (cut), 0.96 (no cut).
    angles = [0.0]
    for c in (0.97, 0.9, 0.96):
        angles.append(angles[-1] + math.acos(c))
    x = torch.tensor([[[math.cos(a), math.sin(a)]] for a in angles])
    assert segment_ids(x, method="avgpool").tolist() == [0, 0, 1, 1]
    assert segment_ids(x, method="avgpool", avgpool_threshold=0.5).tolist() == [0, 0, 0, 0]
    assert segment_ids(x, method="avgpool", avgpool_threshold=0.965).tolist() == [0, 0, 1, 2]


def test_segment_ids_overlap_exactly_beta_does_not_cut():
    # P = 5: two hits give O = 0.4 = beta (no cut); one hit gives 0.2 (cut).
    mask = torch.tensor([[False] * 5, [True, True, False, False, False], [True, False, False, False, False]])
    got = segment_ids(torch.randn(3, 5, 2), indicator="topk", merge_mask=mask, beta=0.4)
    assert got.tolist() == [0, 0, 1]


def test_segment_ids_topk_needs_merge_mask():
    with pytest.raises(ValueError, match="merge_mask"):
        segment_ids(torch.randn(3, 2, 4), indicator="topk")


@pytest.mark.parametrize("method", ["merge_ratio", "avgpool", "none"])
def test_segment_ids_one_frame_is_one_segment(method):
    assert segment_ids(torch.randn(1, 4, 8), method=method).tolist() == [0]


def test_segment_ids_none_is_all_zero():
    x, _ = planted_video(3, 9, [3, 6], 4)
    ids = segment_ids(x, method="none")
    assert ids.dtype == torch.long
    assert ids.tolist() == [0] * 9
    # The same video does get cut by the other methods, so `none` really ignores the content.
    assert segment_ids(x).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_segment_ids_bad_names_list_allowed():
    with pytest.raises(ValueError, match="merge_ratio.*avgpool.*none"):
        segment_ids(torch.randn(3, 2, 4), method="kmeans")
    with pytest.raises(ValueError, match="tau.*topk"):
        segment_ids(torch.randn(3, 2, 4), indicator="cosine")


@settings(max_examples=30, deadline=None)
@given(
    num_frames=st.integers(2, 8),
    num_slots=st.integers(2, 6),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_identical_consecutive_frames_never_cut_and_merged(num_frames, num_slots, seed, data):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_frames, num_slots, 32, generator=gen)
    dup = data.draw(st.lists(st.booleans(), min_size=num_frames - 1, max_size=num_frames - 1))
    for t in range(1, num_frames):
        if dup[t - 1]:
            x[t] = x[t - 1]
    for method in ("merge_ratio", "avgpool"):
        ids = segment_ids(x, method=method).tolist()
        for t in range(1, num_frames):
            if dup[t - 1]:
                assert ids[t] == ids[t - 1], (method, t, ids)
    num_dup = sum(dup)
    # Merge exactly the duplicated frames' tokens: they are the only candidates with cosine ~1.
    rho = (num_dup * num_slots + 0.5) / (num_frames * num_slots)
    k = merge_count(num_frames, num_slots, rho)
    assert k == num_dup * num_slots
    mask = merge_set(same_slot_similarity(x), k)
    for t in range(1, num_frames):
        assert bool(mask[t].all()) == dup[t - 1] and bool(mask[t].any()) == dup[t - 1]
