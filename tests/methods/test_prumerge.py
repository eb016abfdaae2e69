"""Tests of the PruMerge+ baseline (hieravid.methods.prumerge)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import build_inputs, num_visual_tokens

import hieravid
from hieravid.methods.base import VideoTokens
from hieravid.methods.budget import keep_count
from hieravid.methods.prumerge import (
    PruMerge,
    create_prumerge,
    frame_counts,
    iqr_outliers,
    prumerge_importance,
    prumerge_merge,
    prumerge_select,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def grid_tokens(x: torch.Tensor) -> VideoTokens:
    num_frames, num_slots, dim = x.shape
    n = num_frames * num_slots
    return VideoTokens(
        features=x.reshape(n, dim), frame=torch.arange(n) // num_slots, slot=torch.arange(n) % num_slots,
        num_frames=num_frames, num_slots=num_slots, instruction=torch.randn(3, dim),
    )


# --------------------------------------------------------------------------------- slow references


def ref_importance(frame: torch.Tensor) -> list[float]:
    """softmax over the frame's tokens of <mean token, token> / sqrt(D), one token at a time (float64)."""
    x = frame.double()
    query = sum(x[p] for p in range(x.shape[0])) / x.shape[0]
    logits = [float(x[p] @ query) / math.sqrt(x.shape[1]) for p in range(x.shape[0])]
    top = max(logits)
    e = [math.exp(v - top) for v in logits]
    return [v / sum(e) for v in e]


def ref_frame(frame: torch.Tensor, n_keep: int, *, plus: bool, neighbors: int, merge: str):
    """PruMerge+ on one frame, literally: the importance quota ceil(n/4) by importance (ties: lower slot),
    the rest at ranks floor(i R / n_u) of the remaining tokens in slot order, then each kept token merged
    with its nearest other tokens (cosine)."""
    num_slots = frame.shape[0]
    a = ref_importance(frame)
    quota = math.ceil(n_keep / 4) if plus else n_keep
    by_importance = sorted(range(num_slots), key=lambda p: (-a[p], p))
    important = set(by_importance[:quota])
    remaining = [p for p in range(num_slots) if p not in important]
    n_uniform = n_keep - quota
    uniform = {remaining[(i * len(remaining)) // n_uniform] for i in range(n_uniform)}
    keep = sorted(important | uniform)
    x = frame.double()
    unit = x / x.norm(dim=1, keepdim=True)
    k = min(neighbors, num_slots - 1)
    merged = []
    for i in keep:
        others = sorted((p for p in range(num_slots) if p != i), key=lambda p: -float(unit[i] @ unit[p]))[:k]
        absorbed = sum((a[j] * x[j] for j in others), torch.zeros_like(x[i]))
        if merge == "sum":
            merged.append(x[i] + absorbed)
        else:
            merged.append((a[i] * x[i] + absorbed) / (a[i] + sum(a[j] for j in others)))
    return keep, merged, important


# ----------------------------------------------------------------------------------------- the parts


def test_frame_counts_spread_evenly():
    assert frame_counts(10, 4, 5).tolist() == [2, 3, 2, 3]
    assert frame_counts(0, 3, 2).tolist() == [0, 0, 0]
    assert frame_counts(6, 3, 2).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="total"):
        frame_counts(7, 3, 2)


@settings(max_examples=50, deadline=None)
@given(num_frames=st.integers(1, 50), num_slots=st.integers(1, 30), data=st.data())
def test_frame_counts_sum_and_bounds(num_frames, num_slots, data):
    total = data.draw(st.integers(0, num_frames * num_slots))
    counts = frame_counts(total, num_frames, num_slots)
    assert int(counts.sum()) == total
    assert int(counts.max()) - int(counts.min()) <= 1 and int(counts.max()) <= num_slots


def test_importance_matches_the_reference():
    x = torch.randn(3, 7, 10)
    a = prumerge_importance(x)
    for t in range(3):
        torch.testing.assert_close(a[t].double(), torch.tensor(ref_importance(x[t]), dtype=torch.float64))
    torch.testing.assert_close(a.sum(dim=1), torch.ones(3))


def test_iqr_outliers_match_numpy():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(4, 30, generator=gen)
    a[0, 3], a[2, 7], a[2, 8] = 5.0, 9.0, 7.0
    outliers = iqr_outliers(a)
    for t in range(4):
        row = a[t].numpy().astype(np.float64)
        q1, q3 = np.percentile(row, 25), np.percentile(row, 75)
        assert outliers[t].tolist() == (row > q3 + 1.5 * (q3 - q1)).tolist()
    assert outliers[0, 3] and outliers[2, 7] and outliers[2, 8]


def test_selection_quota_and_uniform_grid():
    # 12 slots, keep 8: quota ceil(8/4) = 2 by importance, 6 evenly over the 10 remaining slots.
    importance = torch.tensor([[0.0, 0.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 0.0, 8.0, 0.0, 0.0]])
    keep, important = prumerge_select(importance, torch.tensor([8]))
    assert important.nonzero()[:, 1].tolist() == [4, 9]
    remaining = [p for p in range(12) if p not in (4, 9)]
    uniform = [remaining[(i * 10) // 6] for i in range(6)]  # ranks 0, 1, 3, 5, 6, 8
    assert keep.nonzero()[:, 1].tolist() == sorted([4, 9] + uniform)


def test_plain_prumerge_keeps_the_most_important():
    importance = torch.rand(3, 10)
    keep, important = prumerge_select(importance, torch.tensor([2, 4, 0]), plus=False)
    assert torch.equal(keep, important)
    for t, n in enumerate([2, 4, 0]):
        assert set(keep[t].nonzero()[:, 0].tolist()) == set(torch.argsort(-importance[t])[:n].tolist())


def test_merge_without_neighbours_returns_the_kept_tokens():
    x = torch.randn(2, 5, 3)
    keep = torch.rand(2, 5) > 0.5
    out = prumerge_merge(x, prumerge_importance(x), keep, neighbors=0)
    torch.testing.assert_close(out, x[keep])


@settings(max_examples=40, deadline=None)
@given(
    num_frames=st.integers(1, 4), num_slots=st.integers(1, 12), seed=st.integers(0, 2**31 - 1),
    budget=st.floats(0.05, 1.0), neighbors=st.sampled_from([0, 1, 3, 32]), plus=st.booleans(),
    merge=st.sampled_from(["sum", "average"]),
)
def test_decide_matches_the_per_frame_reference(num_frames, num_slots, seed, budget, neighbors, plus, merge):
    x = torch.randn(num_frames, num_slots, 6, generator=torch.Generator().manual_seed(seed))
    method = PruMerge(budget, neighbors=neighbors, plus=plus, merge=merge)
    state = {"num_layers": 8}
    decision = method.decide(0, grid_tokens(x), state)
    total = keep_count(budget, num_frames * num_slots)
    counts = frame_counts(total, num_frames, num_slots).tolist()
    keep = decision.keep.view(num_frames, num_slots)
    expected_features = []
    for t in range(num_frames):
        kept, merged, _ = ref_frame(x[t], counts[t], plus=plus, neighbors=neighbors, merge=merge)
        assert keep[t].nonzero()[:, 0].tolist() == kept
        expected_features += merged
    assert int(decision.keep.sum()) == total
    assert decision.features.shape == (total, 6)
    if expected_features:
        torch.testing.assert_close(decision.features.double(), torch.stack(expected_features), rtol=1e-4, atol=1e-5)
    assert state["iqr_outliers"].shape == (num_frames,)


def test_iqr_outliers_are_inside_the_quota():
    # A frame with two strong outliers and a quota of 2: the quota is exactly those outliers.
    gen = torch.Generator().manual_seed(2)
    x = 0.1 * torch.randn(1, 16, 8, generator=gen)
    x[0, :, 0] += 1.0
    x[0, 5] *= 40.0
    x[0, 11] *= 30.0
    importance = prumerge_importance(x)
    outliers = iqr_outliers(importance)
    keep, important = prumerge_select(importance, torch.tensor([8]))
    assert outliers[0].nonzero()[:, 0].tolist() == [5, 11]
    assert important[0].nonzero()[:, 0].tolist() == [5, 11]
    assert keep[0, 5] and keep[0, 11]


def test_merge_keeps_dtype():
    x = torch.randn(2, 6, 4).to(torch.bfloat16)
    decision = PruMerge(0.5).decide(0, grid_tokens(x), {"num_layers": 8})
    assert decision.features.dtype == torch.bfloat16 and decision.features.shape == (6, 4)


def test_a_sum_past_float16_s_range_saturates_instead_of_becoming_inf():
    """The reference's sum merge can reach twice the largest feature: in float16 a finite feature (the
    unpruned model's is) must not come back as inf."""
    x = torch.randn(1, 6, 4)
    x[0, :, 0] = 40000.0
    keep = torch.tensor([[True, False, True, False, False, False]])
    merged = prumerge_merge(x.half(), torch.ones(1, 6), keep, neighbors=2, merge="sum")
    assert merged.dtype == torch.float16 and torch.isfinite(merged).all()
    assert (merged[:, 0] == torch.finfo(torch.float16).max).all()


# ------------------------------------------------------------------------------------------ the method


def test_budget_rule_and_decision_points():
    method = PruMerge(0.3)
    assert method.keep_fraction(28) == pytest.approx(0.3)
    assert method.decision_layers(28) == [0]
    assert method.expected_tokens_per_layer(1000, 4) == [keep_count(0.3, 1000)] * 4
    assert PruMerge(1.0).decision_layers(28) == []


def test_decide_refuses_partial_grid_and_other_layers():
    tokens = grid_tokens(torch.randn(2, 3, 4))
    tokens.num_frames = 3
    with pytest.raises(ValueError, match="full video grid"):
        PruMerge(0.5).decide(0, tokens, {"num_layers": 8})
    with pytest.raises(ValueError, match="layer 0"):
        PruMerge(0.5).decide(1, grid_tokens(torch.randn(2, 3, 4)), {"num_layers": 8})


def test_options_and_factory():
    method = create_prumerge(0.3, neighbors=8, plus=False, merge="average")
    assert isinstance(method, PruMerge) and method.name == "prumerge"
    assert (method.neighbors, method.plus, method.merge) == (8, False, "average")
    with pytest.raises(ValueError, match="unknown option"):
        create_prumerge(0.3, k=8)
    with pytest.raises(ValueError, match="neighbors"):
        PruMerge(0.3, neighbors=-1)
    with pytest.raises(ValueError, match="plus"):
        PruMerge(0.3, plus=1)
    with pytest.raises(ValueError, match="merge"):
        PruMerge(0.3, merge="max")


# ------------------------------------------------------------------------------------------ on a model


def test_tokens_per_layer_follow_the_budget_rule(family, model):
    inputs = build_inputs(family, model)
    method = PruMerge(0.3)
    with torch.no_grad(), hieravid.apply(model, method) as handle:
        model(**inputs)
    n = num_visual_tokens(family, model, inputs)
    assert handle.last_stats.per_sample_tokens_per_layer[0] == method.expected_tokens_per_layer(n, 8)


def test_merged_features_reach_the_model(family, model):
    inputs = build_inputs(family, model)
    with torch.no_grad():
        with hieravid.apply(model, PruMerge(0.3)):
            merged = model(**inputs).logits[:, -1]
        with hieravid.apply(model, PruMerge(0.3, neighbors=0)):  # same tokens, nothing merged
            plain = model(**inputs).logits[:, -1]
    assert not torch.allclose(merged, plain)
