"""Tests of the DyCoke baseline (hieravid.methods.dycoke, its TTM stage)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import build_inputs, video_token_id

import hieravid
from hieravid.methods.base import VideoTokens
from hieravid.methods.budget import keep_count
from hieravid.methods.dycoke import DyCoke, create_dycoke, frame_keep_counts, reference_frames, ttm_keep

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def reference_ttm(x: torch.Tensor, per_frame: int) -> torch.Tensor:
    """The public code's two passes, written out: adjacent pairs (t, t+1) for even t, then (a, a+2) for every
    window start a; each compared frame keeps its ``per_frame`` slots least similar to the other frame."""
    num_frames, num_slots, _ = x.shape
    keep = torch.ones(num_frames, num_slots, dtype=torch.bool)

    def prune(frame: int, against: int) -> None:
        cos = torch.nn.functional.cosine_similarity
        sim = [float(cos(x[frame, p], x[against, p], dim=0)) for p in range(num_slots)]
        least = sorted(range(num_slots), key=lambda p: (sim[p], p))[:per_frame]
        keep[frame] = False
        keep[frame, least] = True

    for t in range(0, num_frames - 1, 2):
        prune(t + 1, t)
    for a in range(0, num_frames - 2, 4):
        prune(a + 2, a)  # overrides the first pass, which kept frame a + 2 whole
    return keep


def test_reference_frames():
    assert reference_frames(10).tolist() == [-1, 0, 0, 2, -1, 4, 4, 6, -1, 8]
    assert reference_frames(1).tolist() == [-1]


@pytest.mark.parametrize("num_frames", [4, 8, 12])
@pytest.mark.parametrize("seed", range(3))
def test_matches_the_public_scheme_at_k_07(num_frames, seed):
    # K = 0.7 on P = 10: every compared frame keeps int(0.3 * 10) = 3, i.e. budget (1 + 3 * 0.3) / 4.
    x = torch.randn(num_frames, 10, 8, generator=torch.Generator().manual_seed(seed))
    counts = frame_keep_counts(0.475, num_frames, 10)
    assert counts.tolist() == [10 if t % 4 == 0 else 3 for t in range(num_frames)]
    assert torch.equal(ttm_keep(x, counts), reference_ttm(x, 3))


def test_the_fourth_frame_is_compared_with_the_unpruned_third():
    x = torch.randn(4, 6, 5, generator=torch.Generator().manual_seed(7))
    x[3] = x[2]  # frame 3 repeats frame 2 exactly: similarity 1 everywhere
    x[3, 4] = -x[2, 4]  # ... except slot 4, the only one it keeps with 1 token
    keep = ttm_keep(x, torch.tensor([6, 1, 1, 1]))
    assert keep[3].tolist() == [False, False, False, False, True, False]


@settings(max_examples=100, deadline=None)
@given(num_frames=st.integers(1, 40), num_slots=st.integers(1, 30), data=st.data())
def test_frame_counts_hit_the_budget(num_frames, num_slots, data):
    anchors = (num_frames + 3) // 4
    budget = data.draw(st.floats(anchors / num_frames, 1.0))
    counts = frame_keep_counts(budget, num_frames, num_slots)
    assert int(counts.sum()) == keep_count(budget, num_frames * num_slots)
    compared = [int(c) for t, c in enumerate(counts) if t % 4]
    assert all(int(c) == num_slots for t, c in enumerate(counts) if t % 4 == 0)
    assert not compared or max(compared) - min(compared) <= 1
    assert compared == sorted(compared, reverse=True)  # the earlier frames take the leftovers


def test_budget_below_the_anchors_is_refused_with_the_minimum():
    with pytest.raises(ValueError, match="0.25"):
        DyCoke(0.2)
    with pytest.raises(ValueError, match=r"smallest budget it can reach is 0\.500"):
        frame_keep_counts(0.3, 2, 10)  # two frames: the anchor alone is half of them


def test_decision_drops_without_merging():
    x = torch.randn(8, 6, 4, generator=torch.Generator().manual_seed(0))
    tokens = VideoTokens(
        features=x.reshape(48, 4), frame=torch.arange(8).repeat_interleave(6), slot=torch.arange(6).repeat(8),
        num_frames=8, num_slots=6,
    )
    method = DyCoke(0.5)
    decision = method.decide(0, tokens, {"num_layers": 4})
    assert decision.merge_into is None and decision.features is None
    assert int(decision.keep.sum()) == keep_count(0.5, 48)
    assert method.decision_layers(4) == [0] and DyCoke(1.0).decision_layers(4) == []
    assert method.expected_tokens_per_layer(48, 4) == [24] * 4
    with pytest.raises(ValueError, match="no options"):
        create_dycoke(0.5, window=4)


# ------------------------------------------------------------------------------------------ on a model


def test_on_a_model_tokens_per_layer_and_text(family, model):
    inputs = build_inputs(family, model, batch=2, prompt_tokens=[8, 5], left_pad=[0, 1], seed=3)
    method = DyCoke(0.4)
    with torch.no_grad(), hieravid.apply(model, method) as handle:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    stats = handle.last_stats
    for b, rows in enumerate(stats.per_sample_tokens_per_layer):
        assert rows == method.expected_tokens_per_layer(stats.visual_tokens[b], 8)
        valid = inputs["attention_mask"][b].bool()
        text = torch.nonzero(valid & (inputs["input_ids"][b] != video_token_id(family, model))).squeeze(1)
        assert all(torch.isin(text, layer[b]).all() for layer in stats.kept_positions)
