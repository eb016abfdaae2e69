"""Tests of hieravid.ops.dpp: conditional kernel (Eq. 9), greedy MAP (Eq. 10), per-segment DPP and the
relevance-bins selector, against brute-force references written with loops in float64."""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from device_reads import DeviceReads
from loop_references import ref_bins

from hieravid.ops.dpp import conditional_kernel, greedy_map, pack_segments, segment_bin_select, segment_dpp_select
import hieravid.ops.dpp as dpp_module


# --------------------------------------------------------------------------------------------------
# Slow references
# --------------------------------------------------------------------------------------------------


def ref_greedy_logdet(kernel: torch.Tensor, valid: list[bool], k: int) -> tuple[list[int], float]:
    """Greedy MAP by brute force: at each step add the candidate j maximising det(L[S+j, S+j]) (float64),
    first index on ties. Also return the smallest margin seen, relative to the kernel's scale: the gap
    between the best and the second-best gain, and the best gain itself (rank not exhausted)."""
    L = kernel.double()
    scale = max(float(L.diagonal().max()), 1e-300)
    chosen: list[int] = []
    det_s = 1.0
    margin = math.inf
    for _ in range(k):
        gains = []
        for j in range(L.shape[0]):
            if valid[j] and j not in chosen:
                idx = torch.tensor(chosen + [j])
                gains.append((float(torch.linalg.det(L[idx][:, idx])), j))
        best_det, best_j = max(gains, key=lambda g: (g[0], -g[1]))
        ranked = sorted((g[0] for g in gains), reverse=True)
        if len(ranked) > 1:
            margin = min(margin, (ranked[0] - ranked[1]) / det_s / scale)
        margin = min(margin, best_det / det_s / scale)
        chosen.append(best_j)
        det_s = best_det
    return chosen, margin


def ref_kernel(features: torch.Tensor, relevance: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 9 entry by entry: r_i r_j <x_i, x_j> / (|x_i| |x_j|); zero at padding and zero vectors."""
    feats = features.double().tolist()
    rel = relevance.double().tolist()
    ok = valid.tolist()
    groups, n = len(feats), len(feats[0])
    out = torch.zeros(groups, n, n, dtype=torch.float64)
    for g in range(groups):
        norms = [math.sqrt(sum(v * v for v in feats[g][i])) for i in range(n)]
        for i in range(n):
            for j in range(n):
                if ok[g][i] and ok[g][j] and norms[i] > 0 and norms[j] > 0:
                    dot = sum(a * b for a, b in zip(feats[g][i], feats[g][j]))
                    out[g, i, j] = rel[g][i] * rel[g][j] * dot / (norms[i] * norms[j])
    return out


def random_psd(gen: torch.Generator, groups: int, n: int, dim: int, valid: torch.Tensor) -> torch.Tensor:
    """Diag(r) Xn Xn^T diag(r) built in float64 by the test itself, padding zeroed, returned as float32."""
    x = torch.randn(groups, n, dim, generator=gen, dtype=torch.float64)
    x = x / x.norm(dim=-1, keepdim=True)
    r = 0.2 + 0.8 * torch.rand(groups, n, generator=gen, dtype=torch.float64)
    x = x * r.unsqueeze(-1) * valid.unsqueeze(-1)
    return (x @ x.transpose(1, 2)).float()


@st.composite
def kernel_batches(draw, max_n=10, full_rank=True):
    groups = draw(st.integers(1, 3))
    n = draw(st.integers(1, max_n))
    valid = [draw(st.lists(st.booleans(), min_size=n, max_size=n)) for _ in range(groups)]
    if draw(st.booleans()):  # also the usual layout: valid prefix, padding at the end
        valid = [sorted(v, reverse=True) for v in valid]
    ks = [draw(st.integers(0, sum(v))) for v in valid]
    seed = draw(st.integers(0, 2**31 - 1))
    dim = n + 2 if full_rank else draw(st.integers(1, 3))
    valid_t = torch.tensor(valid, dtype=torch.bool).view(groups, n)
    kernel = random_psd(torch.Generator().manual_seed(seed), groups, n, dim, valid_t)
    return kernel, valid_t, torch.tensor(ks, dtype=torch.long)


# --------------------------------------------------------------------------------------------------
# greedy_map
# --------------------------------------------------------------------------------------------------

# "numba-blocked": the compiled loop in blocks even where it would run unblocked (small kernels).
BACKENDS = ["torch", "numba", "numba-blocked"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_map_accepts_a_kernel_that_requires_grad(backend):
    gen = torch.Generator().manual_seed(5)
    valid = torch.ones(2, 12, dtype=torch.bool)
    kernel = random_psd(gen, 2, 12, 16, valid)
    k = torch.tensor([4, 7])
    expected = run_greedy(kernel, k, valid, backend="torch")
    assert torch.equal(run_greedy(kernel.requires_grad_(), k, valid, backend=backend), expected)


def run_greedy(kernel, k, valid, *, backend, **kwargs):
    if backend == "numba-blocked":
        with mock.patch.object(dpp_module, "_UNBLOCKED_FLOATS", 0):
            return greedy_map(kernel, k, valid, backend="numba", **kwargs)
    return greedy_map(kernel, k, valid, backend=backend, **kwargs)



@settings(max_examples=50, deadline=None)
@given(batch=kernel_batches())
@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_map_matches_brute_force_logdet(batch, backend):
    kernel, valid, k = batch
    refs = [ref_greedy_logdet(kernel[g], valid[g].tolist(), int(k[g])) for g in range(kernel.shape[0])]
    # Float32 vs float64: skip near-ties and exhausted ranks, where either pick is right.
    assume(all(margin > 1e-3 for _, margin in refs))
    picked = run_greedy(kernel, k, valid, backend=backend)
    assert picked.dtype == torch.bool and picked.shape == valid.shape
    for g, (chosen, _) in enumerate(refs):
        assert sorted(torch.nonzero(picked[g]).squeeze(1).tolist()) == sorted(chosen)
        assert not (picked[g] & ~valid[g]).any()
    for block in (1, 3):
        assert torch.equal(run_greedy(kernel, k, valid, block=block, backend=backend), picked)


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_map_hand_example(backend):
    # Token 0 has the largest variance; token 1 is a near copy of 0, token 2 is orthogonal to it.
    x = torch.tensor([[1.0, 0.0], [0.99, 0.141], [0.0, 0.9]])
    kernel = (x @ x.T).unsqueeze(0)
    picked = run_greedy(kernel, torch.tensor([2]), torch.ones(1, 3, dtype=torch.bool), backend=backend)
    assert picked.tolist() == [[True, False, True]]


@settings(max_examples=25, deadline=None)
@given(
    groups=st.integers(1, 4),
    n=st.integers(8, 30),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_map_blocked_equals_unblocked(groups, n, seed, data, backend):
    gen = torch.Generator().manual_seed(seed)
    sizes = [data.draw(st.integers(0, n)) for _ in range(groups)]
    valid = torch.tensor([[c < size for c in range(n)] for size in sizes], dtype=torch.bool).view(groups, n)
    kernel = random_psd(gen, groups, n, n + 4, valid)
    k = torch.tensor([data.draw(st.integers(0, size)) for size in sizes], dtype=torch.long)
    unblocked = run_greedy(kernel, k, valid, block=1, backend=backend)
    assert unblocked.sum(dim=1).tolist() == k.tolist()
    for block in (2, 3, 5, 64):
        assert torch.equal(run_greedy(kernel, k, valid, block=block, backend=backend), unblocked), block
    assert torch.equal(run_greedy(kernel, k, valid, backend=backend), unblocked)


@pytest.mark.parametrize("k", [3, 5, 8])
@pytest.mark.parametrize("block", [1, 3, 64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_map_k_larger_than_rank(k, block, backend):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(8, 2, generator=gen)  # rank 2
    x = x / x.norm(dim=1, keepdim=True)
    kernel = (x @ x.T).unsqueeze(0)
    assert not torch.isnan(kernel).any()
    picked = run_greedy(kernel, torch.tensor([k]), torch.ones(1, 8, dtype=torch.bool), block=block, backend=backend)
    assert int(picked.sum()) == k  # k distinct tokens, no NaN pivot picked twice
    # The first two picks (inside the rank) are the brute-force ones.
    chosen, _ = ref_greedy_logdet(kernel[0], [True] * 8, 2)
    assert all(bool(picked[0, j]) for j in chosen)


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_map_zero_kernel_picks_lowest_indices(backend):
    picked = run_greedy(torch.zeros(2, 6, 6), torch.tensor([3, 1]), torch.ones(2, 6, dtype=torch.bool), backend=backend)
    assert picked.tolist() == [[True, True, True, False, False, False], [True, False, False, False, False, False]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_map_duplicate_tokens_are_not_picked_twice_over_others(backend):
    # Tokens 0 and 1 are identical; with k = 2 the second pick must be the other direction (token 2).
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.5]])
    picked = run_greedy((x @ x.T).unsqueeze(0), torch.tensor([2]), torch.ones(1, 3, dtype=torch.bool), backend=backend)
    assert picked.tolist() == [[True, False, True]]
    # k = 3 exceeds the rank: the copy comes last, still exactly three picks.
    picked = run_greedy((x @ x.T).unsqueeze(0), torch.tensor([3]), torch.ones(1, 3, dtype=torch.bool), backend=backend)
    assert picked.tolist() == [[True, True, True]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rank_floor", [0.0, 1e-3])
def test_greedy_map_picks_the_largest_residual_variance_however_close(backend, rank_floor):
    """Eq. 10's argmax d2 compares the variances themselves: two that differ in their last bit are told
    apart, in a group of small variances as in one of large ones."""
    for scale in (1.0, 2.0**-8):
        d2 = torch.tensor([0.5, float(np.nextafter(np.float32(0.5), np.float32(1))), 0.25]) * scale
        picked = run_greedy(torch.diag(d2).unsqueeze(0), torch.tensor([1]), torch.ones(1, 3, dtype=torch.bool),
                            backend=backend, rank_floor=rank_floor)
        assert picked.tolist() == [[False, True, False]], scale


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_map_picks_do_not_change_when_the_kernel_is_scaled_by_a_power_of_two(backend, seed):
    """Multiplying the kernel by 2^-8 scales every d2 exactly, so argmax d2 picks the same tokens."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(6, 16, generator=gen)
    x = centres[torch.randint(0, 6, (4, 120), generator=gen)] + 0.05 * torch.randn(4, 120, 16, generator=gen)
    relevance = 0.01 + 0.02 * torch.rand(4, 120, generator=gen)  # a low-relevance segment: small variances
    valid = torch.ones(4, 120, dtype=torch.bool)
    kernel = conditional_kernel(x, relevance, valid)
    k = torch.tensor([50, 40, 30, 60])
    picked = run_greedy(kernel, k, valid, backend=backend, rank_floor=0.0)
    assert torch.equal(run_greedy(kernel * 2.0**-8, k, valid, backend=backend, rank_floor=0.0), picked)


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_map_k_zero(backend):
    kernel = random_psd(torch.Generator().manual_seed(0), 2, 5, 7, torch.ones(2, 5, dtype=torch.bool))
    picked = run_greedy(kernel, torch.tensor([0, 0]), torch.ones(2, 5, dtype=torch.bool), backend=backend)
    assert not picked.any()
    picked = run_greedy(kernel, torch.tensor([0, 2]), torch.ones(2, 5, dtype=torch.bool), backend=backend)
    assert picked.sum(dim=1).tolist() == [0, 2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_map_k_too_large_raises(backend):
    valid = torch.tensor([[True, True, False, False], [True, True, True, True]])
    kernel = random_psd(torch.Generator().manual_seed(0), 2, 4, 6, valid)
    with pytest.raises(ValueError):
        run_greedy(kernel, torch.tensor([3, 1]), valid, backend=backend)  # group 0 has only 2 tokens
    with pytest.raises(ValueError):
        run_greedy(kernel, torch.tensor([1, 5]), valid, backend=backend)
    with pytest.raises(ValueError):
        run_greedy(kernel, torch.tensor([-1, 1]), valid, backend=backend)


# --------------------------------------------------------------------------------------------------
# conditional_kernel
# --------------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    groups=st.integers(1, 3),
    n=st.integers(1, 6),
    dim=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_conditional_kernel_matches_explicit(groups, n, dim, seed, data):
    gen = torch.Generator().manual_seed(seed)
    features = 3.0 * torch.randn(groups, n, dim, generator=gen)
    relevance = torch.rand(groups, n, generator=gen)
    valid = torch.tensor(
        [data.draw(st.lists(st.booleans(), min_size=n, max_size=n)) for _ in range(groups)], dtype=torch.bool
    ).view(groups, n)
    if data.draw(st.booleans()):
        features[0, 0] = 0.0  # a zero vector: zero row and column, no NaN
    got = conditional_kernel(features, relevance, valid)
    assert got.dtype == torch.float32 and got.shape == (groups, n, n)
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got.double(), ref_kernel(features, relevance, valid), rtol=1e-5, atol=1e-6)
    assert torch.equal(got, got.transpose(1, 2)) or torch.allclose(got, got.transpose(1, 2), atol=1e-7)


def test_conditional_kernel_bf16_features():
    features = torch.randn(1, 4, 8).to(torch.bfloat16)
    relevance = torch.rand(1, 4)
    valid = torch.ones(1, 4, dtype=torch.bool)
    got = conditional_kernel(features, relevance, valid)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref_kernel(features, relevance, valid), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[0].diagonal(), relevance[0] ** 2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [dpp_module._GRAM_MIN_TOKENS, 301])
def test_large_kernel_blocks_are_built_in_panels_as_one_product(n):
    # From _GRAM_MIN_TOKENS tokens on, the block is multiplied out in row panels below the diagonal and
    # mirrored: the same entries as one product (up to float32 rounding), exactly symmetric.
    gen = torch.Generator().manual_seed(n)
    y = torch.randn(2, n, 40, generator=gen)
    got = dpp_module._gram(y)
    torch.testing.assert_close(got, torch.bmm(y, y.transpose(1, 2)), rtol=1e-5, atol=1e-4)
    assert torch.equal(got, got.transpose(1, 2))


def test_panels_pick_what_one_product_picks(monkeypatch):
    features, relevance, segment, _ = make_tokens([300, 280], 64, 11)
    k = torch.tensor([210, 70])
    panels = segment_dpp_select(features, relevance, segment, k)
    monkeypatch.setattr(dpp_module, "_GRAM_MIN_TOKENS", 10**9)
    assert torch.equal(panels, segment_dpp_select(features, relevance, segment, k))


# --------------------------------------------------------------------------------------------------
# segment_dpp_select / pack_segments
# --------------------------------------------------------------------------------------------------


def per_segment_reference(features, relevance, segment, k):
    """Run conditional_kernel + greedy_map on each segment on its own (G = 1, no padding)."""
    keep = torch.zeros(segment.numel(), dtype=torch.bool)
    for i in range(k.numel()):
        members = torch.nonzero(segment == i).squeeze(1)
        if members.numel() == 0:
            continue
        valid = torch.ones(1, members.numel(), dtype=torch.bool)
        kernel = conditional_kernel(features[members].unsqueeze(0), relevance[members].unsqueeze(0), valid)
        picked = greedy_map(kernel, k[i : i + 1], valid)[0]
        keep[members[picked]] = True
    return keep


def make_tokens(sizes: list[int], dim: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    segment = torch.cat([torch.full((s,), i, dtype=torch.long) for i, s in enumerate(sizes)])
    features = torch.randn(segment.numel(), dim, generator=gen)
    relevance = 1e-3 + torch.rand(segment.numel(), generator=gen)
    return features, relevance, segment, gen


@pytest.mark.parametrize("backend", ["numba", "torch"])  # numba: size buckets; torch: one padded loop
@pytest.mark.parametrize("seed", range(4))
def test_segment_dpp_select_equals_per_segment_greedy_with_buckets(seed, backend):
    sizes = [3, 40, 7, 0, 19, 1]
    features, relevance, segment, gen = make_tokens(sizes, 48, seed)
    k = torch.tensor([int(torch.randint(0, s + 1, (1,), generator=gen)) for s in sizes])
    k[1] = 17
    keep = segment_dpp_select(features, relevance, segment, k, backend=backend)
    assert keep.dtype == torch.bool and keep.shape == segment.shape
    assert torch.bincount(segment[keep], minlength=len(sizes)).tolist() == k.tolist()
    assert torch.equal(keep, per_segment_reference(features, relevance, segment, k))


def test_size_buckets_bound_padding_unless_one_loop():
    sizes = [4, 40, 7, 0, 19, 1, 38]
    segments = [0, 1, 2, 4, 5, 6]
    buckets = dpp_module._size_buckets(sizes, segments, 0)
    assert sorted(sum(buckets, [])) == segments
    assert buckets == [[1, 6], [4], [0, 2], [5]]  # 40 38 | 19 | 7 4 | 1: within a factor of two
    assert dpp_module._size_buckets(sizes, segments, 40) == [segments]


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 9), min_size=1, max_size=4),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_segment_dpp_select_matches_brute_force(sizes, seed, data):
    features, relevance, segment, _ = make_tokens(sizes, 12, seed)
    k = torch.tensor([data.draw(st.integers(0, s)) for s in sizes], dtype=torch.long)
    # Brute force on a kernel the test builds itself.
    expected = torch.zeros(segment.numel(), dtype=torch.bool)
    for i, ki in enumerate(k.tolist()):
        members = torch.nonzero(segment == i).squeeze(1)
        if members.numel() == 0:
            continue
        valid = torch.ones(1, members.numel(), dtype=torch.bool)
        kernel = ref_kernel(features[members].unsqueeze(0), relevance[members].unsqueeze(0), valid)[0]
        chosen, margin = ref_greedy_logdet(kernel, [True] * members.numel(), ki)
        assume(margin > 1e-3 or ki in (0, members.numel()))
        expected[members[torch.tensor(chosen, dtype=torch.long)]] = True
    keep = segment_dpp_select(features, relevance, segment, k)
    assert torch.equal(keep, expected)


def test_segment_dpp_select_k_zero_and_full():
    sizes = [5, 6, 4]
    features, relevance, segment, _ = make_tokens(sizes, 8, 1)
    keep = segment_dpp_select(features, relevance, segment, torch.tensor([0, 6, 0]))
    assert keep.tolist() == [False] * 5 + [True] * 6 + [False] * 4
    assert not segment_dpp_select(features, relevance, segment, torch.tensor([0, 0, 0])).any()
    assert segment_dpp_select(features, relevance, segment, torch.tensor([5, 6, 4])).all()


def test_segment_dpp_select_reads_the_device_twice_whatever_the_segments(monkeypatch):
    # Three size buckets (40 | 19 | 7 4) with the torch loop, which makes each bucket's picks in one block
    # (k <= 64) and reads nothing back. The reads: the segment sizes (bincount), then sizes and k at once.
    monkeypatch.setattr(dpp_module, "_ONE_LOOP_TOKENS", 0)
    sizes = [4, 40, 7, 19]
    features, relevance, segment, _ = make_tokens(sizes, 16, 2)
    k = torch.tensor([2, 30, 3, 9])
    with DeviceReads() as mode:
        keep = segment_dpp_select(features, relevance, segment, k, backend="torch")
    assert torch.bincount(segment[keep], minlength=4).tolist() == k.tolist()
    assert sorted(mode.reads) == ["bincount", "tolist"]


def test_the_blocked_greedy_loop_reads_the_device_once_between_blocks():
    # Full rank (d > n), 30 picks in blocks of 8: four blocks, one read after each but the last.
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(1, 40, 48, generator=gen)
    kernel = features @ features.transpose(1, 2)
    valid = torch.ones(1, 40, dtype=torch.bool)
    with DeviceReads() as mode:
        picks = dpp_module._blocked_greedy(kernel, torch.tensor([30]), valid, 30, 8, dpp_module._torch_block_picks, 0)
    assert mode.reads == ["tolist"] * 3
    assert torch.equal(picks, dpp_module._blocked_greedy(kernel, torch.tensor([30]), valid, 30, 30,
                                                         dpp_module._torch_block_picks, 0))


def test_segment_dpp_select_non_contiguous_segments():
    # Tokens of two segments interleaved in sequence order; each keeps its own count, order untouched.
    features, relevance, _, _ = make_tokens([12], 16, 5)
    segment = torch.tensor([0, 1] * 6)
    k = torch.tensor([2, 4])
    keep = segment_dpp_select(features, relevance, segment, k)
    assert torch.bincount(segment[keep], minlength=2).tolist() == [2, 4]
    assert torch.equal(keep, per_segment_reference(features, relevance, segment, k))


def test_segment_dpp_select_bad_k_raises():
    features, relevance, segment, _ = make_tokens([3, 4], 8, 0)
    with pytest.raises(ValueError):
        segment_dpp_select(features, relevance, segment, torch.tensor([4, 1]))
    with pytest.raises(ValueError):
        segment_dpp_select(features, relevance, segment, torch.tensor([1, -1]))
    with pytest.raises(ValueError):
        segment_dpp_select(features, relevance, segment, torch.tensor([1]))  # too few entries


def test_pack_segments_keeps_sequence_order():
    segment = torch.tensor([0, 1, 0, 2, 1, 0])
    token_index, valid, n_max = pack_segments(segment, torch.tensor([2, 0]))
    assert n_max == 3
    assert token_index.tolist() == [[3, -1, -1], [0, 2, 5]]
    assert valid.tolist() == [[True, False, False], [True, True, True]]


# --------------------------------------------------------------------------------------------------
# segment_bin_select
# --------------------------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 12), min_size=1, max_size=5),
    data=st.data(),
    interleave=st.booleans(),
)
def test_segment_bin_select_matches_loop(sizes, data, interleave):
    segment = [i for i, s in enumerate(sizes) for _ in range(s)]
    if interleave:
        segment = data.draw(st.permutations(segment))
    # Few distinct values so that ties inside a bin are common.
    relevance = [data.draw(st.sampled_from([0.0, 0.25, 0.5, 0.5, 1.0])) for _ in segment]
    k = [data.draw(st.integers(0, s)) for s in sizes]
    keep = segment_bin_select(
        torch.tensor(relevance, dtype=torch.float32), torch.tensor(segment, dtype=torch.long), torch.tensor(k)
    )
    assert keep.dtype == torch.bool
    assert keep.tolist() == ref_bins(relevance, segment, k)
    counts = [sum(1 for t, s in enumerate(segment) if s == i and keep[t]) for i in range(len(sizes))]
    assert counts == k


def test_segment_bin_select_hand_example():
    # One segment of 7 tokens, k = 3: bins [0, 2), [2, 4), [4, 7) (b * 7 // 3); ties go to the earlier token.
    relevance = torch.tensor([0.1, 0.9, 0.9, 0.3, 0.2, 0.5, 0.6])
    keep = segment_bin_select(relevance, torch.zeros(7, dtype=torch.long), torch.tensor([3]))
    assert keep.tolist() == [False, True, True, False, False, False, True]


def test_segment_bin_select_bad_k_raises():
    with pytest.raises(ValueError):
        segment_bin_select(torch.rand(4), torch.tensor([0, 0, 1, 1]), torch.tensor([3, 1]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_picks_beyond_the_rank_follow_relevance_and_ignore_round_off(backend):
    """Past the kernel's rank the residual variances are round-off; the picks must then follow the
    kernel diagonal (relevance squared), the same under a perturbation far below the floor."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 10, 2, generator=gen)  # rank 2
    r = torch.linspace(0.1, 1.0, 10).flip(0)[None]  # token 0 most relevant
    valid = torch.ones(1, 10, dtype=torch.bool)
    kernel = conditional_kernel(x, r, valid)
    order = []
    for k in range(1, 11):
        picked = run_greedy(kernel, torch.tensor([k]), valid, backend=backend)[0]
        new = [i for i in torch.nonzero(picked).squeeze(1).tolist() if i not in order]
        assert len(new) == 1
        order += new
    rest = order[2:]  # after the two rank-filling picks
    assert rest == sorted(rest, key=lambda i: -float(r[0, i]))
    noisy = kernel + 1e-9 * torch.randn(kernel.shape, generator=gen)
    noisy = (noisy + noisy.transpose(1, 2)) / 2
    for k in (3, 6, 10):
        clean = run_greedy(kernel, torch.tensor([k]), valid, backend=backend)
        assert torch.equal(clean, run_greedy(noisy, torch.tensor([k]), valid, backend=backend))


def test_greedy_map_backends_agree_at_real_sizes():
    # LLaVA-Video-like stage: 8 segments of 256 tokens, d 896, about 70% kept; several blocked updates
    # and column drops happen on the way.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, 256, 896, generator=gen)
    valid = torch.arange(256)[None, :] < torch.tensor([256, 250, 256, 200, 256, 131, 256, 256])[:, None]
    kernel = conditional_kernel(x, torch.rand(8, 256, generator=gen), valid)
    k = (valid.sum(dim=1) * 0.7).long()
    torch_picks = greedy_map(kernel, k, valid, backend="torch")
    assert torch.equal(greedy_map(kernel, k, valid, backend="numba"), torch_picks)
    assert torch.equal(run_greedy(kernel, k, valid, backend="numba-blocked"), torch_picks)
    assert torch.equal(greedy_map(kernel, k, valid), torch_picks)
    assert torch_picks.sum(dim=1).tolist() == k.tolist()


def test_greedy_map_compiled_blocks_one_long_segment():
    # One 1024-token segment keeping 70%: too large for the unblocked compiled loop (k x n > 2^18), so
    # it runs in blocks with Schur updates and column drops; the picks are the torch loop's.
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 1024, 896, generator=gen)
    valid = torch.ones(1, 1024, dtype=torch.bool)
    kernel = conditional_kernel(x, torch.rand(1, 1024, generator=gen), valid)
    k = torch.tensor([716])
    assert 716 * 1024 > dpp_module._UNBLOCKED_FLOATS
    picks = greedy_map(kernel, k, valid, backend="numba")
    assert torch.equal(picks, greedy_map(kernel, k, valid, backend="torch"))
    assert int(picks.sum()) == 716


@pytest.mark.parametrize("backend", ["numba", "numba-blocked"])
def test_groups_past_their_rank_pick_as_the_torch_loop_does(backend):
    # One group of rank 6 that must pick 150 (most picks below the floor, whole blocks of zero rows
    # whose Schur update is skipped), one of full rank picking 40, one past its rank only at the end.
    gen = torch.Generator().manual_seed(11)
    n, dim = 200, 48
    basis = torch.randn(3, 6, dim, generator=gen)
    x = torch.randn(3, n, dim, generator=gen)
    x[0] = torch.randn(n, 6, generator=gen) @ basis[0]  # rank 6
    valid = torch.arange(n)[None, :] < torch.tensor([200, 180, 60])[:, None]
    x[2, :60, : dim - 8] = 0  # rank 8 over its 60 tokens
    kernel = conditional_kernel(x, 0.2 + 0.8 * torch.rand(3, n, generator=gen), valid)
    k = torch.tensor([150, 40, 20])
    expected = greedy_map(kernel, k, valid, backend="torch", block=16)
    assert torch.equal(run_greedy(kernel, k, valid, backend=backend, block=16), expected)
    assert expected.sum(dim=1).tolist() == k.tolist()


def test_greedy_map_bad_backend_raises():
    kernel = torch.eye(3)[None]
    with pytest.raises(ValueError, match="backend"):
        greedy_map(kernel, torch.tensor([1]), torch.ones(1, 3, dtype=torch.bool), backend="numpy")


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_the_specifications_plain_rule_is_a_rank_floor_of_zero(backend):
    """Token 1 repeats token 0 (residual exactly 0 after it); token 2 is new but of small relevance, so its
    kernel diagonal, 4e-4, is under the default floor (1e-3 of the largest). The default then ranks by
    relevance and takes the repeat; the specification's rule (floor 0) takes the new direction."""
    from hieravid.ops import segment_dpp_select

    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    relevance = torch.tensor([1.0, 0.03, 0.02])
    segment, k = torch.zeros(3, dtype=torch.long), torch.tensor([2])
    default = segment_dpp_select(features, relevance, segment, k, backend=backend)
    plain = segment_dpp_select(features, relevance, segment, k, backend=backend, rank_floor=0.0)
    assert default.tolist() == [True, True, False]
    assert plain.tolist() == [True, False, True]


def test_the_rank_floor_is_a_hieravid_switch():
    from hieravid.config import HieraVidConfig
    from hieravid.methods import build

    assert HieraVidConfig().dpp_rank_floor == 1e-3
    assert build("hieravid:dpp_rank_floor=0", 0.3).config.dpp_rank_floor == 0
    with pytest.raises(ValueError, match="dpp_rank_floor must be a number in"):
        HieraVidConfig(dpp_rank_floor=1.0)


def test_hieravids_stages_pass_the_rank_floor(monkeypatch):
    import hieravid.methods.hieravid as method
    from hieravid.config import HieraVidConfig

    seen = {}
    monkeypatch.setattr(method, "segment_dpp_select", lambda *a, **kw: seen.update(kw) or torch.ones(4, dtype=torch.bool))
    method.decide_stage(torch.randn(4, 8), torch.rand(4), torch.zeros(4, dtype=torch.long), torch.zeros(1), 0.5,
                        HieraVidConfig(dpp_rank_floor=0.0))
    assert seen["rank_floor"] == 0.0


def test_the_numba_loop_compiles_where_no_cache_can_be_written(monkeypatch):
    """Installed read-only with no writable home (a container's service account), Numba finds nowhere to
    cache the compiled loop: it is compiled for this process only, with a warning naming NUMBA_CACHE_DIR."""
    from numba.core import caching

    from hieravid.warning import HieravidWarning

    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # the name differs across Numba releases
    monkeypatch.setattr(impl, "_locator_classes", [])  # no place to write a cache
    monkeypatch.setattr(dpp_module, "_COMPILED", None)
    with pytest.warns(HieravidWarning, match="NUMBA_CACHE_DIR"):
        dpp_module._compiled_block_picks()
    kernel = torch.diag(torch.tensor([0.5, 0.75, 0.25])).unsqueeze(0)
    picked = greedy_map(kernel, torch.tensor([2]), torch.ones(1, 3, dtype=torch.bool), backend="numba")
    assert picked.tolist() == [[True, True, False]]


def run_select(*args, backend, **kwargs):
    if backend == "numba-blocked":
        with mock.patch.object(dpp_module, "_UNBLOCKED_FLOATS", 0):
            return segment_dpp_select(*args, backend="numba", **kwargs)
    return segment_dpp_select(*args, backend=backend, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_token_that_is_not_finite_is_left_out_and_the_others_keep_their_selection(backend, bad):
    """A hidden state that overflowed (float16 gives inf) makes a zero row of the kernel, not a NaN one:
    the segment keeps exactly k tokens, the same the DPP picks without that token, on every backend."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 16, generator=gen)
    r = torch.rand(40, generator=gen) + 0.1
    segment = torch.arange(40) // 20  # two segments of 20
    k = torch.tensor([6, 5])
    poisoned = x.clone()
    poisoned[7, 3] = bad
    keep = run_select(poisoned, r, segment, k, backend=backend)
    rest = torch.cat((torch.arange(7), torch.arange(8, 40)))
    alone = run_select(x[rest], r[rest], segment[rest], k, backend=backend)
    assert not keep[7] and torch.equal(keep[rest], alone)
    assert torch.equal(torch.bincount(segment[keep], minlength=2), k)
    nan_relevance = r.clone()
    nan_relevance[30] = float("nan")
    keep = run_select(x, nan_relevance, segment, k, backend=backend)
    assert not keep[30] and torch.equal(torch.bincount(segment[keep], minlength=2), k)
    kernel = conditional_kernel(poisoned[None], r[None], torch.ones(1, 40, dtype=torch.bool))
    assert torch.isfinite(kernel).all() and not kernel[0, 7].any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_features_that_are_all_nan_still_keep_k_tokens_by_relevance(backend):
    x = torch.full((10, 4), float("nan"))
    r = torch.arange(10, dtype=torch.float32)
    keep = run_select(x, r, torch.zeros(10, dtype=torch.long), torch.tensor([5]), backend=backend)
    assert keep.sum() == 5


def test_segment_bin_select_leaves_out_a_token_of_nan_relevance():
    keep = segment_bin_select(torch.tensor([float("nan"), 0.5, 0.2]), torch.zeros(3, dtype=torch.long),
                              torch.tensor([1]))
    assert keep.tolist() == [False, True, False]
