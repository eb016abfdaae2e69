"""Tests of hieravid.ops.ranking against plain-Python references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hieravid.ops.ranking import instruction_similarity, segment_top_k, top_k_mask


def ref_top_k(score: list[float], k: int) -> list[bool]:
    order = sorted(range(len(score)), key=lambda i: (-score[i], i))
    chosen = set(order[:k])
    return [i in chosen for i in range(len(score))]


def ref_segment_top_k(score: list[float], segment: list[int], k: list[int]) -> list[bool]:
    keep = [False] * len(score)
    for s, ks in enumerate(k):
        members = [i for i, g in enumerate(segment) if g == s]
        for i in sorted(members, key=lambda i: (-score[i], i))[:ks]:
            keep[i] = True
    return keep


# Few distinct values so ties are common.
scores = st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, -1.0, 3.0]), min_size=0, max_size=30)


@settings(max_examples=100, deadline=None)
@given(score=scores, data=st.data())
def test_top_k_mask_matches_reference(score, data):
    k = data.draw(st.integers(0, len(score)))
    keep = top_k_mask(torch.tensor(score, dtype=torch.float32), k)
    assert keep.tolist() == ref_top_k(score, k)
    assert int(keep.sum()) == k


def test_top_k_mask_ties_go_to_the_earlier_token():
    assert top_k_mask(torch.tensor([1.0, 2.0, 1.0, 1.0]), 2).tolist() == [True, True, False, False]


@pytest.mark.parametrize("k", [-1, 4])
def test_top_k_mask_bad_k(k):
    with pytest.raises(ValueError, match="k must be in"):
        top_k_mask(torch.zeros(3), k)


@st.composite
def segmented(draw):
    num_segments = draw(st.integers(1, 5))
    n = draw(st.integers(0, 30))
    segment = draw(st.lists(st.integers(0, num_segments - 1), min_size=n, max_size=n))
    score = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, -0.5]), min_size=n, max_size=n))
    present = [segment.count(s) for s in range(num_segments)]
    k = [draw(st.integers(0, p)) for p in present]
    return score, segment, k


@settings(max_examples=150, deadline=None)
@given(case=segmented())
def test_segment_top_k_matches_reference(case):
    score, segment, k = case
    keep = segment_top_k(
        torch.tensor(score, dtype=torch.float32), torch.tensor(segment, dtype=torch.long), torch.tensor(k)
    )
    assert keep.tolist() == ref_segment_top_k(score, segment, k)


def test_segment_top_k_bad_counts():
    with pytest.raises(ValueError, match="per-segment k"):
        segment_top_k(torch.zeros(3), torch.tensor([0, 0, 1]), torch.tensor([3, 0]))
    with pytest.raises(ValueError, match="segment ids go up to"):
        segment_top_k(torch.zeros(3), torch.tensor([0, 0, 2]), torch.tensor([1, 0]))


def test_instruction_similarity_is_the_mean_cosine_over_instruction_tokens():
    gen = torch.Generator().manual_seed(0)
    features, instruction = torch.randn(7, 12, generator=gen), torch.randn(4, 12, generator=gen)
    features[3] = 0.0  # a zero vector has similarity 0
    expected = torch.stack(
        [torch.stack([F.cosine_similarity(f, t, dim=0) for t in instruction]).mean() for f in features]
    )
    got = instruction_similarity(features, instruction)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert got.dtype == torch.float32
    assert float(got[3]) == 0.0


def test_instruction_similarity_without_instruction_is_none():
    assert instruction_similarity(torch.randn(3, 4), torch.zeros(0, 4)) is None
    assert instruction_similarity(torch.randn(3, 4), None) is None
