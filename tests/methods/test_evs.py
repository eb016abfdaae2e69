"""Tests of the EVS baseline (hieravid.methods.evs)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from synthetic import planted_video
from tiny_models import build_inputs, num_visual_tokens

import hieravid
from hieravid.methods.base import VideoTokens
from hieravid.methods.budget import keep_count
from hieravid.methods.evs import EVS, FIRST_FRAME_SCORE, create_evs, evs_dissimilarity, evs_keep

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def grid_tokens(x: torch.Tensor) -> VideoTokens:
    num_frames, num_slots, dim = x.shape
    n = num_frames * num_slots
    return VideoTokens(
        features=x.reshape(n, dim), frame=torch.arange(n) // num_slots, slot=torch.arange(n) % num_slots,
        num_frames=num_frames, num_slots=num_slots, instruction=torch.randn(3, dim),
    )


def ref_evs(x: torch.Tensor, num_keep: int) -> list[bool]:
    """vLLM's compute_retention_mask, token by token: 1 - cos to the previous frame's slot, frame 0 = 255,
    stable descending order, the first num_keep stay."""
    num_frames, num_slots, _ = x.shape
    score = []
    for t in range(num_frames):
        for p in range(num_slots):
            if t == 0:
                score.append(255.0)
                continue
            a, b = x[t, p].double(), x[t - 1, p].double()
            score.append(1.0 - float(a @ b) / (float(a.norm()) * float(b.norm())))
    order = sorted(range(len(score)), key=lambda i: (-score[i], i))
    keep = [False] * len(score)
    for i in order[:num_keep]:
        keep[i] = True
    return keep


# ------------------------------------------------------------------------------------------- the rule


@settings(max_examples=60, deadline=None)
@given(
    num_frames=st.integers(1, 6), num_slots=st.integers(1, 7), seed=st.integers(0, 2**31 - 1),
    budget=st.floats(0.01, 1.0),
)
def test_matches_the_token_by_token_reference(num_frames, num_slots, seed, budget):
    x = torch.randn(num_frames, num_slots, 8, generator=torch.Generator().manual_seed(seed))
    k = keep_count(budget, num_frames * num_slots)
    keep = evs_keep(x, k)
    assert keep.shape == (num_frames, num_slots)
    assert int(keep.sum()) == k
    assert keep.reshape(-1).tolist() == ref_evs(x, k)


def test_dissimilarity_values():
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[1.0, 0.0], [2.0, 0.0]], [[-3.0, 0.0], [0.0, 0.0]]])
    d = evs_dissimilarity(x)
    assert d[0].tolist() == [FIRST_FRAME_SCORE, FIRST_FRAME_SCORE]
    torch.testing.assert_close(d[1], torch.tensor([0.0, 1.0]))  # same direction; orthogonal
    torch.testing.assert_close(d[2], torch.tensor([2.0, 1.0]))  # opposite; a zero vector has similarity 0


def test_first_frame_is_kept_whole_from_one_frame_of_budget():
    x = torch.randn(5, 4, 6)
    for k in range(4, 21):  # at least one frame
        assert evs_keep(x, k)[0].all()


def test_budget_below_one_frame_keeps_the_first_slots_of_frame_zero():
    # No one-frame floor: the budget's count wins; tied sentinels are broken by sequence order.
    keep = evs_keep(torch.randn(5, 4, 6), 3)
    assert keep[0].tolist() == [True, True, True, False] and not keep[1:].any()


def test_static_video_keeps_the_earliest_tokens():
    # Every later frame repeats frame 0: all dissimilarities are 0 (one-hot rows: cosines exactly 1), ties
    # go to the earlier token.
    frame = torch.eye(5)[:3].unsqueeze(0)
    keep = evs_keep(frame.expand(4, 3, 5).clone(), 7)
    assert keep.reshape(-1).tolist() == [True] * 7 + [False] * 5


def test_keeps_the_changed_tokens_of_a_planted_cut():
    x, _ = planted_video(seed=3, num_frames=6, cuts=[3], num_slots=5)
    keep = evs_keep(x, 10)  # frame 0 (5 tokens) and the new scene's first frame (5 tokens)
    assert keep[0].all() and keep[3].all()
    assert int(keep.sum()) == 10


def test_bad_count():
    with pytest.raises(ValueError, match="num_keep"):
        evs_keep(torch.randn(2, 2, 3), 5)


# ------------------------------------------------------------------------------------------ the method


def test_budget_rule_and_decision_points():
    method = EVS(0.3)
    assert method.keep_fraction(28) == pytest.approx(0.3)
    assert method.decision_layers(28) == [0]
    assert method.expected_tokens_per_layer(1000, 4) == [keep_count(0.3, 1000)] * 4
    assert EVS(1.0).decision_layers(28) == []
    assert EVS(1.0).expected_tokens_per_layer(10, 3) == [10] * 3


@settings(max_examples=40, deadline=None)
@given(budget=st.floats(0.01, 1.0), num_frames=st.integers(1, 5), num_slots=st.integers(1, 6))
def test_decide_keeps_exactly_the_budget(budget, num_frames, num_slots):
    tokens = grid_tokens(torch.randn(num_frames, num_slots, 4))
    decision = EVS(budget).decide(0, tokens, {"num_layers": 8})
    n = num_frames * num_slots
    assert int(decision.keep.sum()) == keep_count(budget, n) == n - math.floor((1 - budget) * n)
    assert decision.merge_into is None and decision.features is None


def test_decide_refuses_partial_grid_and_other_layers():
    tokens = grid_tokens(torch.randn(2, 3, 4))
    tokens.num_slots = 4
    with pytest.raises(ValueError, match="full video grid"):
        EVS(0.5).decide(0, tokens, {"num_layers": 8})
    with pytest.raises(ValueError, match="layer 0"):
        EVS(0.5).decide(2, grid_tokens(torch.randn(2, 3, 4)), {"num_layers": 8})


def test_factory():
    method = create_evs(0.25)
    assert isinstance(method, EVS) and method.name == "evs" and method.budget == 0.25
    with pytest.raises(ValueError, match="no options"):
        create_evs(0.25, q=0.5)
    with pytest.raises(ValueError, match="budget"):
        create_evs(0.0)


# ------------------------------------------------------------------------------------------ on a model


def test_tokens_per_layer_follow_the_budget_rule(family, model):
    inputs = build_inputs(family, model)
    method = EVS(0.3)
    with torch.no_grad(), hieravid.apply(model, method) as handle:
        model(**inputs)
    n = num_visual_tokens(family, model, inputs)
    assert handle.last_stats.per_sample_tokens_per_layer[0] == method.expected_tokens_per_layer(n, 8)
    assert handle.last_stats.per_sample_tokens_per_layer[0][0] == keep_count(0.3, n)
