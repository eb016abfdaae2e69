"""Tests of HieraVid's ablation variants (hieravid.methods.ablations)."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from synthetic import planted_video
from tiny_models import build_inputs, num_visual_tokens

import hieravid
from hieravid.config import HieraVidConfig
from hieravid.methods import ablations
from hieravid.methods.ablations import (
    HieraVidNoLayer,
    HieraVidTopK,
    _ratio_for,
    create_hieravid_no_layer,
    create_hieravid_no_seg,
    create_hieravid_topk,
)
from hieravid.methods.base import VideoTokens
from hieravid.methods.budget import keep_count
from hieravid.methods.hieravid import HieraVid
from hieravid.ops import keep_counts, minmax_normalize
from hieravid.schedule import pruned_count

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

T, P, D = 12, 6, 32
CUTS = [4, 8]  # three scenes


def video_tokens(x: torch.Tensor, instruction: torch.Tensor | None = None) -> VideoTokens:
    num_frames, num_slots, dim = x.shape
    return VideoTokens(
        features=x.reshape(-1, dim),
        frame=torch.arange(num_frames).repeat_interleave(num_slots),
        slot=torch.arange(num_slots).repeat(num_frames),
        num_frames=num_frames,
        num_slots=num_slots,
        instruction=torch.randn(5, dim, generator=torch.Generator().manual_seed(9)) if instruction is None
        else instruction,
    )


def in_llm_tokens(n: int, attention: torch.Tensor, calls: list[int]) -> VideoTokens:
    def relevance(query_rows: int = 1) -> torch.Tensor:
        calls.append(query_rows)
        return attention

    return VideoTokens(
        features=torch.randn(n, D, generator=torch.Generator().manual_seed(n)),
        frame=torch.zeros(n, dtype=torch.long), slot=torch.zeros(n, dtype=torch.long),
        num_frames=T, num_slots=P, relevance_from_attention=relevance, instruction=torch.randn(2, D),
    )


# ----------------------------------------------------------------------------------- no segmentation


def test_no_seg_is_hieravid_with_one_segment():
    method = create_hieravid_no_seg(0.3, delta=0.2)
    assert isinstance(method, HieraVid) and method.name == "hieravid_no_seg"
    assert method.config.segmentation == "none" and method.config.delta == 0.2
    x, _ = planted_video(0, T, CUTS, P, dim=D)
    state = {"num_layers": 8}
    method.decide(0, video_tokens(x), state)
    assert state["num_segments"] == 1 and state["z"].tolist() == [0.0]
    assert create_hieravid_no_seg(0.3, segmentation="none").config.segmentation == "none"
    with pytest.raises(ValueError, match="fixes segmentation"):
        create_hieravid_no_seg(0.3, segmentation="avgpool")
    with pytest.raises(ValueError, match="unknown option"):
        create_hieravid_no_seg(0.3, k=2)


# ---------------------------------------------------------------------------------------------- top-k


def ref_topk(score: list[float], segment: list[int], k: list[int]) -> list[bool]:
    keep = [False] * len(score)
    for s, ks in enumerate(k):
        members = sorted((i for i, g in enumerate(segment) if g == s), key=lambda i: (-score[i], i))
        for i in members[:ks]:
            keep[i] = True
    return keep


def _topk_run(method: HieraVidTopK, attention_seed: int = 0):
    """Stage 1 on a planted video, then the first in-LLM stage with random attention."""
    x, _ = planted_video(1, T, CUTS, P, dim=D)
    state = {"num_layers": 8}
    method.decide(0, video_tokens(x), state)
    segment = state["segment"].clone()
    n = segment.numel()
    attention = torch.rand(n, generator=torch.Generator().manual_seed(attention_seed))
    calls: list[int] = []
    layer = state["schedule"].boundaries[1]
    keep = method.decide(layer, in_llm_tokens(n, attention, calls), state).keep
    ratio = state["schedule"].ratios[1]
    k = keep_counts(torch.bincount(segment, minlength=state["z"].numel()), state["z"], ratio)
    return keep, attention, segment, k, calls, state


def test_topk_keeps_each_segments_most_attended_tokens():
    method = create_hieravid_topk(0.3)
    assert isinstance(method, HieraVidTopK) and method.name == "hieravid_topk"
    keep, attention, segment, k, calls, state = _topk_run(method)
    assert state["num_segments"] == 3
    assert keep.tolist() == ref_topk(attention.tolist(), segment.tolist(), k.tolist())
    assert torch.equal(state["segment"], segment[keep])
    assert calls == [1]


def test_topk_by_relevance_with_the_negative_sign_keeps_the_least_attended():
    method = create_hieravid_topk(0.3, topk_by="relevance")
    keep, attention, segment, k, _, _ = _topk_run(method)
    assert keep.tolist() == ref_topk((-attention).tolist(), segment.tolist(), k.tolist())
    positive = create_hieravid_topk(0.3, topk_by="relevance", relevance_sign="positive")
    keep, attention, segment, k, _, _ = _topk_run(positive)
    assert keep.tolist() == ref_topk(attention.tolist(), segment.tolist(), k.tolist())


def test_topk_mean_query_uses_the_configured_rows_within_the_instruction():
    for rows, used in ((1, 1), (2, 2), (3, 2)):  # the instruction has 2 tokens: never a row of the video's
        _, _, _, _, calls, _ = _topk_run(create_hieravid_topk(0.3, relevance_query="mean", query_tokens=rows))
        assert calls == [used]


def test_topk_schedule_is_hieravids():
    topk, full = create_hieravid_topk(0.2), HieraVid(HieraVidConfig(budget=0.2))
    assert topk.decision_layers(28) == full.decision_layers(28) == [0, 7, 14, 21]
    assert topk.expected_tokens_per_layer(640, 28) == full.expected_tokens_per_layer(640, 28)


def test_topk_bad_option():
    with pytest.raises(ValueError, match="topk_by"):
        create_hieravid_topk(0.3, topk_by="dpp")
    with pytest.raises(ValueError, match="unknown option"):
        create_hieravid_topk(0.3, sinks=2)


@pytest.mark.parametrize(
    "variant, options",
    [
        (create_hieravid_topk, {"greedy_backend": "torch"}),
        (create_hieravid_topk, {"in_llm_selector": "bins"}),
        (create_hieravid_topk, {"dpp_rank_floor": 0.0}),
        (create_hieravid_topk, {"relevance_sign": "positive"}),  # topk_by="attention" ranks by a itself
        (create_hieravid_no_layer, {"relevance_query": "mean"}),
        (create_hieravid_no_layer, {"query_tokens": 3}),
        (create_hieravid_no_layer, {"in_llm_selector": "bins"}),
    ],
)
def test_options_a_variant_never_reads_are_refused(variant, options):
    with pytest.raises(ValueError, match=rf"does not use {next(iter(options))}: .*; leave them out"):
        variant(0.3, **options)


def test_options_the_variants_read_are_taken():
    assert create_hieravid_topk(0.3, topk_by="relevance", relevance_sign="positive").config.relevance_sign == "positive"
    assert create_hieravid_no_layer(0.3, greedy_backend="torch", dpp_rank_floor=0.0).config.dpp_rank_floor == 0.0


# ------------------------------------------------------------------------------------ no layer stages


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 5000), data=st.data())
def test_ratio_for_hits_the_target_exactly(n, data):
    target = data.draw(st.integers(0, n))
    ratio = _ratio_for(n, target)
    assert 0.0 <= ratio < 1.0 or target == 0
    assert n - pruned_count(ratio, n) == target  # the stages' count: floor of the product to 9 decimals


def test_merge_ratio_rule():
    assert create_hieravid_no_layer(0.3).merge_ratio(28) == 0.5  # the preset's rho
    assert create_hieravid_no_layer(0.1).merge_ratio(28) == 0.7
    assert create_hieravid_no_layer(0.5).merge_ratio(28) == pytest.approx(1 - 0.5 ** 0.5)  # solver's rho
    assert create_hieravid_no_layer(0.8).merge_ratio(28) == pytest.approx(1 - 0.8 ** 0.5)  # f_1 >= B always
    # Only explicit ratios can merge below B: then stage 1 merges down to B and nothing more.
    assert create_hieravid_no_layer(0.8, ratios=(0.5, 0.3, 0.3, 0.57)).merge_ratio(28) == pytest.approx(0.2)
    assert create_hieravid_no_layer(0.3).decision_layers(28) == [0]
    assert create_hieravid_no_layer(1.0).decision_layers(28) == []
    assert create_hieravid_no_layer(0.3).expected_tokens_per_layer(100, 4) == [30] * 4
    # its rho comes from the S-stage schedule, so a decoder shallower than S is refused when the
    # method is built for the model, not at the first prefill
    with pytest.raises(ValueError, match=r"num_layers \(28\) must be >= num_stages \(50\)"):
        create_hieravid_no_layer(0.3, num_stages=50).decision_layers(28)


def _check_merge_bookkeeping(x: torch.Tensor, decision) -> None:
    """Removed tokens point at a kept token of the same slot in an earlier frame, or at nothing; the
    kept features are the means of each kept token and the tokens pointing at it."""
    flat = x.reshape(-1, x.shape[-1])
    n = flat.shape[0]
    kept = torch.nonzero(decision.keep).squeeze(1)
    for i in range(n):
        j = int(decision.merge_into[i])
        if decision.keep[i]:
            assert j == i
        elif j >= 0:
            assert decision.keep[j] and j % P == i % P and j // P < i // P
    for row, i in enumerate(kept.tolist()):
        members = [i] + [m for m in range(n) if not decision.keep[m] and int(decision.merge_into[m]) == i]
        torch.testing.assert_close(decision.features[row], flat[members].mean(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("budget", [0.3, 0.1, 0.45])
def test_no_layer_reaches_the_budget_at_layer_zero(budget):
    x, _ = planted_video(2, T, CUTS, P, dim=D)
    method = create_hieravid_no_layer(budget, exact_total=True)
    state = {"num_layers": 8}
    decision = method.decide(0, video_tokens(x), state)
    assert int(decision.keep.sum()) == keep_count(budget, T * P)
    assert decision.features.shape == (keep_count(budget, T * P), D)
    assert state["num_segments"] == 3 and state["segment"].numel() == keep_count(budget, T * P)
    _check_merge_bookkeeping(x, decision)
    assert (~decision.keep & (decision.merge_into >= 0)).any()  # some runs were merged
    # without exact_total Eq. 5 may drift a little below the target, never above a 5% margin
    drift = create_hieravid_no_layer(budget).decide(0, video_tokens(x), {"num_layers": 8}).keep.sum()
    assert keep_count(budget, T * P) - 3 <= int(drift) <= keep_count(budget, T * P) + 3


def test_no_layer_when_merging_alone_reaches_the_budget(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("no DPP needed")

    monkeypatch.setattr(ablations, "segment_dpp_select", refuse)
    x, _ = planted_video(3, T, CUTS, P, dim=D)
    method = create_hieravid_no_layer(0.8, ratios=(0.5, 0.3, 0.3, 0.57))
    decision = method.decide(0, video_tokens(x), {"num_layers": 8})
    assert int(decision.keep.sum()) == keep_count(0.8, T * P)
    _check_merge_bookkeeping(x, decision)


@pytest.mark.parametrize("sign", ["negative", "positive"])
def test_no_layer_relevance_is_cdpruners_instruction_relevance(monkeypatch, sign):
    seen = {}
    real = ablations.segment_dpp_select

    def spy(features, relevance, segment, k, **kwargs):
        seen.update(features=features, relevance=relevance)
        return real(features, relevance, segment, k, **kwargs)

    monkeypatch.setattr(ablations, "segment_dpp_select", spy)
    x, _ = planted_video(4, T, CUTS, P, dim=D)
    instruction = torch.randn(3, D, generator=torch.Generator().manual_seed(5))
    create_hieravid_no_layer(0.3, relevance_sign=sign).decide(0, video_tokens(x, instruction), {"num_layers": 8})
    mean_cos = torch.stack(
        [torch.stack([F.cosine_similarity(f, q, dim=0) for q in instruction]).mean() for f in seen["features"]]
    )
    expected = minmax_normalize(-mean_cos if sign == "negative" else mean_cos)
    torch.testing.assert_close(seen["relevance"], expected, rtol=1e-4, atol=1e-5)


def test_no_layer_without_instruction_uses_uniform_relevance(monkeypatch):
    seen = {}
    real = ablations.segment_dpp_select

    def spy(features, relevance, segment, k, **kwargs):
        seen["relevance"] = relevance
        return real(features, relevance, segment, k, **kwargs)

    monkeypatch.setattr(ablations, "segment_dpp_select", spy)
    x, _ = planted_video(4, T, CUTS, P, dim=D)
    create_hieravid_no_layer(0.3).decide(0, video_tokens(x, torch.zeros(0, D)), {"num_layers": 8})
    assert torch.equal(seen["relevance"], torch.ones_like(seen["relevance"]))


def test_no_layer_refuses_other_layers_and_partial_grids():
    x, _ = planted_video(0, T, CUTS, P, dim=D)
    method = create_hieravid_no_layer(0.3)
    with pytest.raises(ValueError, match="layer 0 only"):
        method.decide(2, video_tokens(x), {"num_layers": 8})
    partial = video_tokens(x)
    partial.features = partial.features[:-1]
    with pytest.raises(ValueError, match="grid"):
        method.decide(0, partial, {"num_layers": 8})
    with pytest.raises(ValueError, match="unknown option"):
        create_hieravid_no_layer(0.3, lambda_=0.5)
    assert isinstance(method, HieraVidNoLayer) and method.name == "hieravid_no_layer"


# ------------------------------------------------------------------------------------------ on a model


@pytest.mark.parametrize("variant", ["hieravid_no_seg", "hieravid_topk", "hieravid_no_layer"])
def test_tokens_per_layer_follow_the_variant(family, model, variant):
    factory = getattr(ablations, f"create_{variant}")
    method = factory(0.3, exact_total=True)
    inputs = build_inputs(family, model, batch=2, prompt_tokens=[7, 4], left_pad=[0, 3])
    with torch.no_grad(), hieravid.apply(model, method) as handle:
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    stats = handle.last_stats
    n = num_visual_tokens(family, model, inputs)
    for rows in stats.per_sample_tokens_per_layer:
        assert rows == method.expected_tokens_per_layer(n, 8)
    assert stats.method == variant
    if variant == "hieravid_no_seg":
        assert stats.per_sample_segments == [1, 1]


def test_no_layer_budget_one_equals_the_unpatched_model(family, model):
    inputs = build_inputs(family, model)
    with torch.no_grad():
        ref = model(**inputs).logits[:, -1]
        with hieravid.apply(model, create_hieravid_no_layer(1.0)):
            out = model(**inputs).logits[:, -1]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
