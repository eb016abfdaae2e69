"""Tests of hieravid.ops.scores: segment scores (Eq. 4) and per-segment keep counts (Eq. 5)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hieravid.ops.scores import keep_counts, segment_means, segment_scores


# --------------------------------------------------------------------------------------------------
# Slow references
# --------------------------------------------------------------------------------------------------


def _cos(a: list[float], b: list[float]) -> float:
    na = math.sqrt(sum(v * v for v in a))
    nb = math.sqrt(sum(v * v for v in b))
    return sum(u * v for u, v in zip(a, b)) / (na * nb)


def ref_means(x: torch.Tensor, frame_segment: list[int]) -> list[list[float]]:
    data = x.double().tolist()
    num_segments = max(frame_segment) + 1
    dim = len(data[0][0])
    means = []
    for i in range(num_segments):
        tokens = [tok for t, seg in enumerate(frame_segment) if seg == i for tok in data[t]]
        means.append([sum(tok[c] for tok in tokens) / len(tokens) for c in range(dim)])
    return means


def ref_mv(x: torch.Tensor, frame_segment: list[int], lam: float) -> list[float]:
    """Eq. 4 before standardisation: cos terms with an empty set are 0."""
    s = ref_means(x, frame_segment)
    num_segments, dim = len(s), len(s[0])
    mv = []
    for i in range(num_segments):
        earlier, later = s[:i], s[i + 1 :]
        cos_sel = _cos(s[i], [sum(v[c] for v in earlier) / len(earlier) for c in range(dim)]) if earlier else 0.0
        cos_rem = _cos(s[i], [sum(v[c] for v in later) / len(later) for c in range(dim)]) if later else 0.0
        mv.append(lam * cos_sel + (1 - lam) * (1 - cos_rem))
    return mv


def standardise(mv: list[float]) -> tuple[list[float], float]:
    mean = sum(mv) / len(mv)
    std = math.sqrt(sum((v - mean) ** 2 for v in mv) / len(mv))
    return [(v - mean) / (std + 1e-8) for v in mv], std


def ref_floor(amount: float) -> int:
    """The counts' floor: of the float product rounded to 9 decimals (decimal products that are whole
    numbers stay whole)."""
    return math.floor(round(amount, 9))


def ref_keep_counts(present: list[int], z: list[float], ratio: float, delta: float, lo: float, hi: float) -> list[int]:
    out = []
    for n, zi in zip(present, z):
        rate = min(max(1 - ratio + delta * zi, lo), hi)
        out.append(ref_floor(n * rate))
    return out


def ref_exact_total(present: list[int], z: list[float], base: list[int], ratio: float) -> list[int]:
    """Move one token at a time, cycling through segments in z order (descending to add, ascending to
    remove; stable for equal z), skipping segments that are full (add) or empty (remove)."""
    k = list(base)
    total = sum(present)
    diff = (total - ref_floor(ratio * total)) - sum(k)
    if diff > 0:
        order = sorted(range(len(z)), key=lambda i: -z[i])
        while diff > 0:
            for i in order:
                if diff > 0 and k[i] < present[i]:
                    k[i] += 1
                    diff -= 1
    elif diff < 0:
        order = sorted(range(len(z)), key=lambda i: z[i])
        while diff < 0:
            for i in order:
                if diff < 0 and k[i] > 0:
                    k[i] -= 1
                    diff += 1
    return k


@st.composite
def segmented_videos(draw, max_segments=6):
    num_frames = draw(st.integers(1, 10))
    num_slots = draw(st.integers(1, 4))
    dim = draw(st.integers(2, 8))
    cuts = draw(st.lists(st.booleans(), min_size=num_frames - 1, max_size=num_frames - 1))
    seed = draw(st.integers(0, 2**31 - 1))
    ids = [0]
    for c in cuts:
        ids.append(ids[-1] + int(c))
    gen = torch.Generator().manual_seed(seed)
    # Each segment has its own random offset so its mean is well away from zero.
    offsets = torch.randn(ids[-1] + 1, 1, dim, generator=gen)
    x = torch.stack([offsets[i, 0] + 0.5 * torch.randn(num_slots, dim, generator=gen) for i in ids])
    return x, ids


# --------------------------------------------------------------------------------------------------
# segment_means / segment_scores
# --------------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(case=segmented_videos())
def test_segment_means_match_loop(case):
    x, ids = case
    got = segment_means(x, torch.tensor(ids))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), torch.tensor(ref_means(x, ids), dtype=torch.float64), rtol=1e-5, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(case=segmented_videos(), lam=st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0]))
def test_segment_scores_match_loop_reference(case, lam):
    x, ids = case
    z = segment_scores(x, torch.tensor(ids), lam)
    num_segments = ids[-1] + 1
    assert z.shape == (num_segments,)
    assert z.dtype == torch.float32
    assert torch.isfinite(z).all()
    want, std = standardise(ref_mv(x, ids, lam))
    if num_segments == 1:
        assert z.tolist() == [0.0]
        return
    # z amplifies float32 rounding by 1/std: only compare where the spread is meaningful.
    assume(std > 1e-2)
    for got, ref in zip(z.tolist(), want):
        assert got == pytest.approx(ref, abs=2e-3)
    assert abs(float(z.double().sum())) < 1e-4 * num_segments


@settings(max_examples=40, deadline=None)
@given(case=segmented_videos(), lam=st.floats(0.0, 1.0))
def test_segment_scores_sum_to_zero(case, lam):
    x, ids = case
    z = segment_scores(x, torch.tensor(ids), lam)
    assert abs(float(z.double().sum())) < 1e-4 * len(z)
    if len(z) > 1:
        _, std = standardise(ref_mv(x, ids, lam))
        assume(std > 1e-3)
        # Population standardisation: mean of squares is 1.
        assert float((z.double() ** 2).mean()) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_one_segment_scores_zero(lam):
    z = segment_scores(torch.randn(5, 3, 4), torch.zeros(5, dtype=torch.long), lam)
    assert z.tolist() == [0.0]


def test_two_segments_lambda_zero_last_segment_diversity_is_one():
    # lam = 0: MV_0 = 1 - cos(s_0, s_1), MV_1 = (1 - lam) * (1 - 0) = 1 (empty later set -> cos 0).
    x = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]]])  # cos(s_0, s_1) = 0.707 > 0, so MV_0 < MV_1
    z = segment_scores(x, torch.tensor([0, 1]), lam=0.0)
    torch.testing.assert_close(z, torch.tensor([-1.0, 1.0]), atol=1e-5, rtol=0)


def test_two_segments_lambda_one_first_segment_representativeness_is_zero():
    # lam = 1: MV_0 = 0 (empty earlier set), MV_1 = cos(s_1, s_0) < 0 here, so z = [1, -1].
    x = torch.tensor([[[1.0, 0.0]], [[-1.0, 0.2]]])
    z = segment_scores(x, torch.tensor([0, 1]), lam=1.0)
    torch.testing.assert_close(z, torch.tensor([1.0, -1.0]), atol=1e-5, rtol=0)


def test_three_segments_hand_computed():
    # s_0 = e1, s_1 = e2, s_2 = e1 (one frame, one slot each), lam = 0.5.
    x = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]]])
    c = 1 / math.sqrt(2)
    mv = [
        0.5 * 0 + 0.5 * (1 - c),  # g_rem = (e2 + e1)/2
        0.5 * 0 + 0.5 * (1 - 0),  # g_sel = e1, g_rem = e1: both cosines 0
        0.5 * c + 0.5 * (1 - 0),  # g_sel = (e1 + e2)/2, no later segment
    ]
    want, _ = standardise(mv)
    z = segment_scores(x, torch.tensor([0, 1, 2]), lam=0.5)
    torch.testing.assert_close(z.double(), torch.tensor(want, dtype=torch.float64), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# keep_counts (Eq. 5)
# --------------------------------------------------------------------------------------------------


@st.composite
def count_cases(draw):
    num_segments = draw(st.integers(1, 7))
    present = draw(st.lists(st.integers(0, 60), min_size=num_segments, max_size=num_segments))
    z = draw(st.lists(st.floats(-3.0, 3.0, width=32), min_size=num_segments, max_size=num_segments))
    ratio = draw(st.one_of(st.sampled_from([0.0, 0.3, 0.5, 0.57, 0.7, 0.85, 0.9]), st.floats(0.0, 0.999)))
    delta = draw(st.sampled_from([0.0, 0.1, 0.3, 1.0]))
    return present, z, ratio, delta


@settings(max_examples=150, deadline=None)
@given(case=count_cases())
def test_keep_counts_match_python_floats(case):
    present, z, ratio, delta = case
    k = keep_counts(torch.tensor(present), torch.tensor(z, dtype=torch.float32), ratio, delta=delta)
    assert k.dtype == torch.long
    assert k.tolist() == ref_keep_counts(present, z, ratio, delta, 0.05, 0.95)
    assert all(0 <= ki <= ni for ki, ni in zip(k.tolist(), present))


def test_keep_counts_custom_clip_and_examples():
    present = torch.tensor([100, 100, 100])
    z = torch.tensor([-1.0, 0.0, 1.0])
    assert keep_counts(present, z, 0.7, delta=0.1).tolist() == [20, 30, 40]
    # Clipped at 0.05 and 0.95.
    assert keep_counts(present, torch.tensor([-20.0, 0.0, 20.0]), 0.5).tolist() == [5, 50, 95]
    assert keep_counts(present, z, 0.5, delta=1.0, clip=(0.2, 0.6)).tolist() == [20, 50, 60]
    assert keep_counts(torch.tensor([7]), torch.tensor([0.0]), 0.5).tolist() == [3]


@settings(max_examples=200, deadline=None)
@given(
    # Multiples of 20 and the presets' ratios make whole products (the case float products get wrong) likely.
    present=st.lists(
        st.one_of(st.integers(0, 5000), st.integers(0, 250).map(lambda v: 20 * v)), min_size=1, max_size=6
    ),
    ratio_percent=st.one_of(st.sampled_from([30, 50, 57, 60, 70, 80, 85, 90]), st.integers(0, 99)),
    z_hundredths=st.integers(-300, 300),
    delta=st.sampled_from(["0", "0.1", "0.3"]),
)
def test_keep_counts_floor_the_decimal_product(present, ratio_percent, z_hundredths, delta):
    """Eq. 5 with decimal R, delta and z: k = floor(n * keep_rate) in exact arithmetic, even where the
    float product falls just below a whole number (10 tokens at R = 0.9 keep 1)."""
    ratio, z = Fraction(ratio_percent, 100), Fraction(z_hundredths, 100)
    rate = min(max(1 - ratio + Fraction(delta) * z, Fraction(5, 100)), Fraction(95, 100))
    want = [math.floor(n * rate) for n in present]
    z_tensor = torch.full((len(present),), float(z), dtype=torch.float64)
    k = keep_counts(torch.tensor(present), z_tensor, ratio_percent / 100, delta=float(delta))
    assert k.tolist() == want


def test_keep_counts_whole_decimal_products():
    z = torch.zeros(1)
    assert keep_counts(torch.tensor([10]), z, 0.9).tolist() == [1]  # 10 * (1 - 0.9) is 0.9999999999999998 in floats
    assert keep_counts(torch.tensor([100]), z, 0.9).tolist() == [10]
    assert keep_counts(torch.tensor([20]), z, 0.8).tolist() == [4]
    assert keep_counts(torch.tensor([90]), z, 0.3).tolist() == [63]


@pytest.mark.parametrize("ratio", [1.0, -0.1, float("nan")])
def test_keep_counts_bad_ratio(ratio):
    with pytest.raises(ValueError, match="ratio"):
        keep_counts(torch.tensor([10]), torch.tensor([0.0]), ratio)


@settings(max_examples=150, deadline=None)
@given(case=count_cases())
def test_keep_counts_exact_total(case):
    present, z, ratio, delta = case
    zt = torch.tensor(z, dtype=torch.float32)
    k = keep_counts(torch.tensor(present), zt, ratio, delta=delta, exact_total=True).tolist()
    total = sum(present)
    assert sum(k) == total - ref_floor(ratio * total)
    assert all(0 <= ki <= ni for ki, ni in zip(k, present))
    base = ref_keep_counts(present, z, ratio, delta, 0.05, 0.95)
    assert k == ref_exact_total(present, z, base, ratio)
    # Direction: top-ups never lower a count and trims never raise one.
    if sum(base) <= sum(k):
        assert all(a >= b for a, b in zip(k, base))
    else:
        assert all(a <= b for a, b in zip(k, base))


def test_keep_counts_exact_total_top_up_goes_to_highest_z_first():
    present = torch.tensor([10, 10, 10, 10])
    z = torch.tensor([0.5, -1.0, 1.5, -1.0])
    base = keep_counts(present, z, 0.5, delta=0.0)  # 5 each = 20 = target already
    assert base.tolist() == [5, 5, 5, 5]
    # delta = 0.1: rates 0.55, 0.40, 0.65, 0.40 -> 5, 4, 6, 4 = 19; top up 1 -> highest z (segment 2).
    k = keep_counts(present, z, 0.5, delta=0.1, exact_total=True)
    assert k.tolist() == [5, 4, 7, 4]
    # Trim: ratio 0.75 with delta 1: rates .75 .05 .95 .05 -> 7, 0, 9, 0 = 16; target 10: remove 6 in
    # ascending z order, skipping the empty segments 1 and 3: 0, 2, 0, 2, 0, 2.
    k = keep_counts(present, z, 0.75, delta=1.0, exact_total=True)
    assert sum(k.tolist()) == 10
    assert k.tolist() == [4, 0, 6, 0]


def test_keep_counts_exact_total_with_full_segments():
    # ratio 0 -> target = all tokens; every segment is clipped to 95 % and must be topped up to full.
    present = torch.tensor([3, 40, 7])
    k = keep_counts(present, torch.tensor([0.0, 1.0, -1.0]), 0.0, exact_total=True)
    assert k.tolist() == [3, 40, 7]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_token_that_is_not_finite_leaves_the_scores_finite_and_the_counts_those_of_z_zero(bad):
    """One overflowed hidden state (float16 gives inf) makes its segment's mean, and through the running
    sums every later one, not finite: the scores fall back to 0 (every segment at the stage's own
    ratio) instead of emptying the video."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 8, generator=gen)
    x[4, 1, 0] = bad
    z = segment_scores(x, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert torch.isfinite(z).all()
    present = torch.tensor([8, 8, 8])
    nan_z = torch.tensor([float("nan"), 0.5, -0.5])
    assert keep_counts(present, nan_z, 0.5).tolist() == keep_counts(present, torch.tensor([0.0, 0.5, -0.5]), 0.5).tolist()
    assert keep_counts(present, nan_z, 0.5, exact_total=True).sum() == 12
