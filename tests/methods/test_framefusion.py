"""Tests of the FrameFusion baseline (hieravid.methods.framefusion), against slow loop references."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from synthetic import planted_video
from tiny_models import build_inputs, video_token_id

import hieravid
from hieravid.methods.base import VideoTokens
from hieravid.methods.framefusion import FrameFusion, create_framefusion, previous_slot_similarity, run_anchors

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().tolist(), b.double().tolist()
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def apply_decision(features: torch.Tensor, decision) -> torch.Tensor:
    """Kept tokens, each the plain mean of itself and the tokens merged into it (loop reference)."""
    keep = decision.keep.tolist()
    rows = []
    for i, kept in enumerate(keep):
        if not kept:
            continue
        members = [i] + (
            [] if decision.merge_into is None
            else [j for j, t in enumerate(decision.merge_into.tolist()) if t == i and not keep[j]]
        )
        rows.append(torch.stack([features[j].double() for j in members]).mean(dim=0).float())
    return torch.stack(rows) if rows else features[:0]


def simulate(method, x: torch.Tensor, num_layers: int, score: torch.Tensor):
    """Run every decision of ``method`` over ``num_layers`` layers on a ``(T, P, D)`` video, applying the
    decisions by hand; relevance of each token = ``score[frame, slot]``. Returns tokens per layer and the
    query_rows of every relevance call."""
    num_frames, num_slots, dim = x.shape
    features = x.reshape(-1, dim)
    frame = torch.arange(num_frames).repeat_interleave(num_slots)
    slot = torch.arange(num_slots).repeat(num_frames)
    state = {"num_layers": num_layers}
    counts, calls = [], []
    points = set(method.decision_layers(num_layers))
    finished = False
    for layer in range(num_layers):
        active = method.active(layer, state)
        assert not (finished and active), "once finished a sample stays finished"
        finished = not active
        if layer in points and active:
            def relevance(query_rows=1, frame=frame, slot=slot):
                calls.append(query_rows)
                return score[frame, slot]

            tokens = VideoTokens(
                features=features, frame=frame, slot=slot, num_frames=num_frames, num_slots=num_slots,
                relevance_from_attention=relevance if layer else None, instruction=torch.zeros(3, dim),
            )
            decision = method.decide(layer, tokens, state)
            features = apply_decision(features, decision)
            frame, slot = frame[decision.keep], slot[decision.keep]
        counts.append(features.shape[0])
    return counts, calls


# ------------------------------------------------------------------------------------------ the operations


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), num_frames=st.integers(1, 6), num_slots=st.integers(1, 5))
def test_previous_slot_similarity_matches_a_loop(seed, num_frames, num_slots):
    gen = torch.Generator().manual_seed(seed)
    present = torch.rand(num_frames * num_slots, generator=gen) < 0.7  # an incomplete grid, as after merges
    slot = torch.arange(num_slots).repeat(num_frames)[present]
    features = torch.randn(int(present.sum()), 6, generator=gen)
    order, sim = previous_slot_similarity(features, slot)
    by_token = dict(zip(order.tolist(), sim.tolist()))
    for i in range(features.shape[0]):
        before = [j for j in range(i) if slot[j] == slot[i]]
        if not before:
            assert by_token[i] == float("-inf")
        else:
            assert by_token[i] == pytest.approx(cosine(features[i], features[before[-1]]), abs=1e-5)
    # the order groups slots and keeps sequence order inside each slot
    pairs = [(int(slot[j]), j) for j in order.tolist()]
    assert pairs == sorted(pairs)


def test_zero_tokens_are_never_merged():
    features = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    _, sim = previous_slot_similarity(features, torch.zeros(3, dtype=torch.long))
    assert sim.tolist() == [float("-inf")] * 3


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 12), num_slots=st.integers(1, 4))
def test_run_anchors_matches_a_loop(seed, n, num_slots):
    gen = torch.Generator().manual_seed(seed)
    slot = torch.randint(0, num_slots, (n,), generator=gen)
    order, _ = previous_slot_similarity(torch.randn(n, 3, generator=gen), slot)
    merged_token = torch.rand(n, generator=gen) < 0.5
    first = [min(j for j in range(n) if slot[j] == s) for s in set(slot.tolist())]
    merged_token[first] = False  # the first token of a slot has no predecessor
    merge_into = run_anchors(order, merged_token[order])
    for i in range(n):
        j = i
        while merged_token[j]:
            j = max(k for k in range(j) if slot[k] == slot[i])
        assert int(merge_into[i]) == j


# ------------------------------------------------------------------------------------------ the decisions


def test_threshold_merge_then_prune_at_the_next_layer():
    # Two scenes of 4 near-identical frames: 30 of 40 tokens are >= 0.6 similar to their predecessor.
    x, _ = planted_video(3, 8, [4], 5)
    method = FrameFusion(0.2)
    score = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    counts, calls = simulate(method, x, 8, score)
    # Layer 0: u = 1 - t/n = 0.8 > 30/40, all 30 merge into frames 0 and 4 (10 tokens).
    # Layer 1: the two scenes are unrelated, nothing merges (< 10%): prune at layer 2 to round(44 / 6) = 7.
    assert counts == [10, 10, 7, 7, 7, 7, 7, 7]
    assert calls == [1]  # one relevance call, for the last prompt token


def test_layer0_merge_averages_each_run_into_its_anchor():
    x, _ = planted_video(3, 8, [4], 5)
    tokens = VideoTokens(
        features=x.reshape(40, -1), frame=torch.arange(8).repeat_interleave(5), slot=torch.arange(5).repeat(8),
        num_frames=8, num_slots=5,
    )
    decision = FrameFusion(0.2).decide(0, tokens, {"num_layers": 8})
    assert decision.keep.view(8, 5).all(dim=1).tolist() == [True, False, False, False, True, False, False, False]
    expected_anchor = torch.tensor([0, 0, 0, 0, 4, 4, 4, 4]).repeat_interleave(5) * 5 + torch.arange(5).repeat(8)
    assert decision.merge_into.tolist() == expected_anchor.tolist()
    merged = apply_decision(tokens.features, decision)
    torch.testing.assert_close(merged[:5], x[0:4].mean(dim=0))
    torch.testing.assert_close(merged[5:], x[4:8].mean(dim=0))


def test_top_k_branch_meets_the_budget_at_layer_0_and_stops():
    # A static video: every candidate is similar, more than the upper bound allows.
    x, _ = planted_video(5, 8, [], 10)
    score = torch.randn(8, 10, generator=torch.Generator().manual_seed(1))
    counts, calls = simulate(FrameFusion(0.3), x, 6, score)
    assert counts == [24] * 6  # round(0.3 * 80): merged down to the target level at once
    assert calls == []  # nothing left to prune


def test_nothing_similar_prunes_at_layer_1():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(6, 7, 16, generator=gen)  # unrelated frames: no similarity reaches 0.6
    score = torch.randn(6, 7, generator=gen)
    counts, calls = simulate(FrameFusion(0.4), x, 8, score)
    kept = round((0.4 * 8 * 42 - 42) / 7)
    assert counts == [42] + [kept] * 7
    assert calls == [1]


def test_pruning_keeps_the_most_attended_tokens():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, 6, 16, generator=gen)
    score = torch.randn(4, 6, generator=gen)
    method, state = FrameFusion(0.5), {"num_layers": 4}
    frame, slot = torch.arange(4).repeat_interleave(6), torch.arange(6).repeat(4)

    def tokens(layer):
        return VideoTokens(
            features=x.reshape(24, -1), frame=frame, slot=slot, num_frames=4, num_slots=6,
            relevance_from_attention=(lambda query_rows=1: score.reshape(-1)) if layer else None,
        )

    assert method.decide(0, tokens(0), state).keep.all()
    keep = method.decide(1, tokens(1), state).keep
    kept = round((0.5 * 4 * 24 - 24) / 3)
    assert int(keep.sum()) == kept
    assert set(torch.nonzero(keep).squeeze(1).tolist()) == set(score.reshape(-1).topk(kept).indices.tolist())



def test_merging_short_of_the_target_prunes_at_the_same_layer():
    # 3 frames x 2 slots, 4 layers, B = 0.3: 7.2 tokens in all. Layer 0: slot 0 is static (2 merge),
    # slot 1 changes every frame; 4 tokens leave 3.2 >= 3 for the later layers, merging goes on.
    gen = torch.Generator().manual_seed(5)
    a, b0, b1, b2 = torch.randn(4, 16, generator=gen)
    x = torch.stack([torch.stack([a, b0]), torch.stack([a, b1]), torch.stack([a, b2])])  # (3, 2, 16)
    method, state = FrameFusion(0.3), {"num_layers": 4}
    frame, slot = torch.arange(3).repeat_interleave(2), torch.arange(2).repeat(3)
    first = method.decide(0, VideoTokens(x.reshape(6, -1), frame, slot, 3, 2), state)
    assert first.keep.tolist() == [True, True, False, True, False, True]
    # Layer 1 (tokens f0s0, f0s1, f1s1, f2s1): the level is round(3.2 / 3) = 1 but only 2 tokens could
    # merge; f1s1 is now similar to f0s1. It merges, and the layer prunes to 1 by the mean relevance of
    # each group: {f0s1, f1s1} (0.6) beats f2s1 (0.55) and f0s0 (0.5), though f2s1 beats f0s1 alone.
    features = torch.stack([a, b0, b0 + 0.1 * b1, b2])  # (4, 16)
    relevance = torch.tensor([0.5, 0.2, 1.0, 0.55])
    calls = []
    tokens = VideoTokens(
        features, frame[first.keep], slot[first.keep], 3, 2,
        relevance_from_attention=lambda query_rows=1: calls.append(query_rows) or relevance,
    )
    decision = method.decide(1, tokens, state)
    assert calls == [1]
    assert decision.keep.tolist() == [False, True, False, False]
    assert decision.merge_into.tolist() == [-1, 1, 1, -1]
    torch.testing.assert_close(apply_decision(features, decision), ((features[1] + features[2]) / 2)[None])
    for layer in (2, 3):  # done: the later layers keep the one token (4 + 1 + 1 + 1 = 7 of 7.2)
        later = VideoTokens(features[1:2], frame[:1], slot[1:2], 3, 2, relevance_from_attention=lambda: 1 / 0)
        assert method.decide(layer, later, state).keep.tolist() == [True]


@pytest.mark.parametrize("num_frames", [2, 3, 4])
@pytest.mark.parametrize("noise", [0.5, 0.8, 1.0])
@pytest.mark.parametrize("budget", [0.15, 0.2, 0.3])
def test_few_frames_never_empty_a_layer(num_frames, noise, budget):
    # Few frames: merging runs out of candidates (or a threshold merge would spend nearly everything)
    # while the budget still allows a few tokens per layer. Pruning must then happen at that layer,
    # not leave the later layers with nothing (this used to give e.g. [16, 14, 12, 0, 0, 0, 0, 0]).
    num_slots, num_layers = 12, 8
    x, _ = planted_video(0, num_frames, [], num_slots, dim=16, noise=noise)
    score = torch.randn(num_frames, num_slots, generator=torch.Generator().manual_seed(0))
    counts, calls = simulate(FrameFusion(budget), x, num_layers, score)
    n0 = num_frames * num_slots
    assert min(counts) >= 1
    assert counts == sorted(counts, reverse=True)
    assert len(calls) <= 1
    assert abs(sum(counts) / (num_layers * n0) - budget) <= 0.5 / n0 + 1e-9  # half a token per layer


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    num_frames=st.integers(2, 16),
    num_slots=st.integers(2, 8),
    num_layers=st.integers(8, 32),
    budget=st.floats(0.15, 0.95),
    noise=st.sampled_from([0.01, 0.5, 1.0, 3.0]),
    data=st.data(),
)
def test_layer_average_is_the_budget(seed, num_frames, num_slots, num_layers, budget, noise, data):
    cuts = sorted(data.draw(st.sets(st.integers(1, num_frames - 1), max_size=3)))
    x, _ = planted_video(seed, num_frames, cuts, num_slots, dim=16, noise=noise)
    score = torch.randn(num_frames, num_slots, generator=torch.Generator().manual_seed(seed))
    counts, calls = simulate(FrameFusion(budget), x, num_layers, score)
    n0 = num_frames * num_slots
    assert counts == sorted(counts, reverse=True)
    assert len(calls) <= 1
    # Only the final rounding to whole tokens is off: at most half a token per remaining layer.
    assert abs(sum(counts) - budget * num_layers * n0) <= 0.5 * num_layers + 1e-9


def test_budget_one_has_no_decision_points_and_options_are_checked():
    assert FrameFusion(1.0).decision_layers(28) == []
    assert FrameFusion(0.3).decision_layers(4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="unknown option"):
        create_framefusion(0.3, cost=0.3)
    with pytest.raises(ValueError, match="similarity_lower_bound"):
        FrameFusion(0.3, similarity_lower_bound=2.0)
    with pytest.raises(ValueError, match="budget"):
        FrameFusion(0.0)
    assert create_framefusion(0.3, ratio_lower_bound=0.2).ratio_lower_bound == 0.2


# ------------------------------------------------------------------------------------------ on a model


def test_on_a_model_the_budget_is_met_and_text_stays(family, model):
    inputs = build_inputs(family, model, batch=2, prompt_tokens=[8, 5], left_pad=[0, 1], seed=3)
    with torch.no_grad(), hieravid.apply(model, FrameFusion(0.4)) as handle:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    stats = handle.last_stats
    for b, rows in enumerate(stats.per_sample_tokens_per_layer):
        n0 = stats.visual_tokens[b]
        assert abs(sum(rows) - 0.4 * 8 * n0) <= 0.5 * 8
        assert rows == sorted(rows, reverse=True)
        valid = inputs["attention_mask"][b].bool()
        text = torch.nonzero(valid & (inputs["input_ids"][b] != video_token_id(family, model))).squeeze(1)
        assert all(torch.isin(text, layer[b]).all() for layer in stats.kept_positions)


def test_the_runtime_stops_asking_once_pruning_is_done(family, model, monkeypatch):
    inputs = build_inputs(family, model, batch=2, prompt_tokens=[8, 5], left_pad=[0, 1], seed=3)

    def prefill():
        with torch.no_grad(), hieravid.apply(model, FrameFusion(0.4)) as handle:
            logits = model(**inputs).logits
        return logits, handle.last_stats

    logits, stats = prefill()
    num_layers = len(stats.per_sample_tokens_per_layer[0])
    asked = sorted(stats.decide_seconds_by_layer)
    assert asked == list(range(len(asked))) and len(asked) < num_layers  # the first layers only
    monkeypatch.setattr(FrameFusion, "active", lambda self, layer, state: True)
    always_logits, always = prefill()
    assert sorted(always.decide_seconds_by_layer) == list(range(num_layers))
    # the skipped points would have kept every token
    assert torch.equal(always_logits, logits)
    assert always.per_sample_tokens_per_layer == stats.per_sample_tokens_per_layer
    assert all(torch.equal(a, b) for x, y in zip(always.kept_positions, stats.kept_positions) for a, b in zip(x, y))


def test_pruning_ranks_by_the_attention_of_the_first_layer_after_the_last_merge(monkeypatch):
    # The reference prunes with the attention of the first layer that ran on the merged tokens; here the
    # last merge runs at a layer's input and pruning at the next layer's input, so the ranking is the
    # attention of the layer before the pruning point, over the same tokens.
    from tiny_models import build_model, video_layout

    import hieravid.methods.framefusion as framefusion

    model = build_model("qwen2_vl", attn_implementation="eager")
    inputs = build_inputs("qwen2_vl", model, seed=3)
    start = video_layout("qwen2_vl", model, inputs).frame_spans[0][0][0]  # columns before the video: text
    weights: dict[int, torch.Tensor] = {}
    for index, layer in enumerate(model.model.language_model.layers):
        layer.self_attn.register_forward_hook(lambda m, a, out, index=index: weights.__setitem__(index, out[1]))
    ranked: list[tuple[int, torch.Tensor]] = []
    decide, top_k = FrameFusion.decide, framefusion.top_k_mask
    monkeypatch.setattr(FrameFusion, "decide", lambda self, layer, tokens, state: (
        ranked.append((layer, None)), decide(self, layer, tokens, state))[1])
    monkeypatch.setattr(framefusion, "top_k_mask", lambda score, k: (
        ranked.append((ranked[-1][0], score)), top_k(score, k))[1])
    with torch.no_grad(), hieravid.apply(model, FrameFusion(0.4)) as handle:
        model(**inputs)
    (layer, score), = [(layer, score) for layer, score in ranked if score is not None]
    assert layer >= 1 and handle.last_stats.per_sample_tokens_per_layer[0][layer] < score.numel()
    expected = weights[layer - 1][0, :, -1, start : start + score.numel()].mean(dim=0)  # (n,) heads averaged
    torch.testing.assert_close(score, expected, rtol=1e-4, atol=1e-6)
