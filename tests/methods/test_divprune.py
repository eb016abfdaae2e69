"""Tests of the DivPrune baseline (hieravid.methods.divprune)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import build_inputs, num_visual_tokens

import hieravid
import hieravid.methods.divprune as divprune_module
from hieravid.methods.base import VideoTokens
from hieravid.methods.budget import keep_count
from hieravid.methods.divprune import DivPrune, create_divprune, divprune_select

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def flat_tokens(x: torch.Tensor) -> VideoTokens:
    n, dim = x.shape
    return VideoTokens(
        features=x, frame=torch.zeros(n, dtype=torch.long), slot=torch.arange(n), num_frames=1, num_slots=n,
        instruction=torch.randn(2, dim),
    )


def ref_divprune(x: torch.Tensor, k: int) -> list[bool]:
    """The reference algorithm as published: a full cosine-distance matrix in float64; the first pick is
    the column whose second-smallest entry (the smallest being the token itself) is largest; each next
    pick maximises the column-wise minimum over the rows of the picked tokens."""
    unit = x.double() / x.double().norm(dim=1, keepdim=True)
    distance = 1.0 - unit @ unit.T
    picks: list[int] = []
    for i in range(k):
        if i == 0:
            scores = torch.topk(distance, 2, dim=0, largest=False).values[1, :]
        else:
            scores = distance[picks].min(dim=0).values
        picks.append(int(torch.argmax(scores)))
    keep = [False] * x.shape[0]
    for p in picks:
        keep[p] = True
    return keep


# ------------------------------------------------------------------------------------------- the rule


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 40), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_matches_the_published_greedy(n, seed, data):
    k = data.draw(st.integers(0, n))
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(seed))
    keep = divprune_select(x, k)
    assert int(keep.sum()) == k
    assert keep.tolist() == ref_divprune(x, k)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 50), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_streamed_rows_pick_the_same_tokens(n, seed, data):
    k = data.draw(st.integers(0, n))
    x = torch.randn(n, 5, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(divprune_select(x, k), divprune_select(x, k, max_matrix_elements=0))


def test_streamed_nearest_neighbours_in_small_blocks(monkeypatch):
    monkeypatch.setattr(divprune_module, "_BLOCK_ELEMENTS", 7)  # several row blocks of one or two rows
    x = torch.randn(23, 4, generator=torch.Generator().manual_seed(1))
    for k in (1, 5, 22):
        assert divprune_select(x, k, max_matrix_elements=0).tolist() == ref_divprune(x, k)


def test_one_token_per_cluster():
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(3, 8) * 5
    x = torch.cat([c + 0.01 * torch.randn(6, 8, generator=gen) for c in centres])  # 3 clusters of 6
    keep = divprune_select(x, 3)
    assert [int(keep[i * 6:(i + 1) * 6].sum()) for i in range(3)] == [1, 1, 1]


def test_duplicates_still_give_distinct_tokens():
    x = torch.randn(1, 4).expand(9, 4).clone()  # every distance 0: the reference would re-pick token 0
    keep = divprune_select(x, 4)
    assert int(keep.sum()) == 4 and keep[:4].all()  # ties go to the lowest index


def test_zero_vectors_do_not_produce_nan():
    x = torch.zeros(5, 3)
    x[2] = torch.tensor([1.0, 0.0, 0.0])
    keep = divprune_select(x, 3)
    assert int(keep.sum()) == 3


def test_bf16_input_and_bad_count():
    x = torch.randn(12, 8).to(torch.bfloat16)
    assert int(divprune_select(x, 5).sum()) == 5
    with pytest.raises(ValueError, match="k must be"):
        divprune_select(x, 13)


# ------------------------------------------------------------------------------------------ the method


def test_budget_rule_and_decision_points():
    method = DivPrune(0.2)
    assert method.keep_fraction(28) == pytest.approx(0.2)
    assert method.decision_layers(28) == [0]
    assert method.expected_tokens_per_layer(1000, 4) == [keep_count(0.2, 1000)] * 4
    assert DivPrune(1.0).decision_layers(28) == []


@settings(max_examples=30, deadline=None)
@given(budget=st.floats(0.01, 1.0), n=st.integers(1, 40))
def test_decide_keeps_exactly_the_budget(budget, n):
    decision = DivPrune(budget).decide(0, flat_tokens(torch.randn(n, 4)), {"num_layers": 8})
    assert int(decision.keep.sum()) == keep_count(budget, n)
    assert decision.merge_into is None and decision.features is None


def test_decide_only_at_layer_zero():
    with pytest.raises(ValueError, match="layer 0"):
        DivPrune(0.5).decide(1, flat_tokens(torch.randn(4, 3)), {"num_layers": 8})


def test_factory():
    method = create_divprune(0.25, max_matrix_elements=100)
    assert isinstance(method, DivPrune) and method.name == "divprune" and method.max_matrix_elements == 100
    with pytest.raises(ValueError, match="unknown option"):
        create_divprune(0.25, ratio=0.1)
    with pytest.raises(ValueError, match="max_matrix_elements"):
        create_divprune(0.25, max_matrix_elements=-1)
    with pytest.raises(ValueError, match="budget"):
        create_divprune(1.5)


# ------------------------------------------------------------------------------------------ on a model


def test_tokens_per_layer_follow_the_budget_rule(family, model):
    inputs = build_inputs(family, model)
    method = DivPrune(0.3)
    with torch.no_grad(), hieravid.apply(model, method) as handle:
        model(**inputs)
    n = num_visual_tokens(family, model, inputs)
    assert handle.last_stats.per_sample_tokens_per_layer[0] == method.expected_tokens_per_layer(n, 8)
