"""Tests of the FastV baseline (hieravid.methods.fastv)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import build_inputs, build_model, num_visual_tokens, video_layout

import hieravid
from hieravid.methods.base import VideoTokens
from hieravid.methods.budget import keep_count, layer_average
from hieravid.methods.fastv import FastV, create_fastv

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tokens_with_attention(attention: list[float], dim: int = 4) -> tuple[VideoTokens, list[int]]:
    """VideoTokens whose attention is ``attention``; the list records the query_rows of every call."""
    calls: list[int] = []

    def relevance(query_rows: int = 1) -> torch.Tensor:
        calls.append(query_rows)
        return torch.tensor(attention, dtype=torch.float32)

    n = len(attention)
    tokens = VideoTokens(
        features=torch.randn(n, dim), frame=torch.zeros(n, dtype=torch.long), slot=torch.arange(n),
        num_frames=1, num_slots=n, relevance_from_attention=relevance, instruction=torch.randn(2, dim),
    )
    return tokens, calls


# ------------------------------------------------------------------------------------------ budget rule


@settings(max_examples=100, deadline=None)
@given(num_layers=st.integers(3, 64), data=st.data())
def test_layer_average_of_the_kept_fractions_is_the_budget(num_layers, data):
    k = data.draw(st.integers(1, num_layers - 1))
    budget = data.draw(st.floats(k / num_layers, 1.0).filter(lambda b: b > 0))
    method = FastV(budget, k=k)
    f = method.keep_fraction(num_layers)
    assert layer_average([1.0] * k + [f] * (num_layers - k)) == pytest.approx(budget, abs=1e-12)


def test_paper_setting_k2_r50_on_28_layers():
    # FastV K=2, R=50% on a 28-layer decoder: B = (2 + 26 * 0.5) / 28.
    method = FastV((2 + 26 * 0.5) / 28)
    assert method.keep_fraction(28) == pytest.approx(0.5)
    assert method.decision_layers(28) == [2]
    assert method.expected_tokens_per_layer(1000, 28) == [1000, 1000] + [500] * 26


def test_unreachable_budget_names_the_minimum():
    with pytest.raises(ValueError, match=r"budget >= 0\.071"):
        FastV(0.05).decision_layers(28)
    with pytest.raises(ValueError, match=r"^fastv \(k=2\): .*\(a smaller k, e\.g\. fastv:k=1\)"):
        FastV(0.05).decision_layers(28)
    FastV(2 / 28).decision_layers(28)  # the bound itself: f = 0
    with pytest.raises(ValueError, match=r"\(a smaller k, e\.g\. fastv:k=1\)$"):
        FastV(0.2, k=5).decision_layers(8)  # 0.2 x 8 = 1.6: only k=1 fits
    with pytest.raises(ValueError, match=r"\(k=1 is the earliest FastV prunes\)$"):
        FastV(0.1, k=1).decision_layers(8)  # no k fits: never a hint FastV refuses (k=0)


def test_budget_one_decides_nothing():
    assert FastV(1.0).decision_layers(28) == []
    assert FastV(1.0).expected_tokens_per_layer(10, 4) == [10] * 4


@pytest.mark.parametrize("k", [0, -1])
def test_k_below_one_is_refused_with_the_reason(k):
    with pytest.raises(ValueError, match="layer 0 has no attention to rank by"):
        create_fastv(0.5, k=k)


@pytest.mark.parametrize("k", [True, 2.0, "2"])
def test_k_not_an_integer_is_refused_as_such(k):
    with pytest.raises(ValueError, match=r"must be an integer, got .*; the paper uses k=2$"):
        FastV(0.5, k=k)


def test_k_beyond_the_decoder():
    with pytest.raises(ValueError, match="lower k"):
        FastV(0.9, k=8).decision_layers(8)


def test_factory_options():
    method = create_fastv(0.5, k=3)
    assert isinstance(method, FastV) and method.k == 3 and method.name == "fastv"
    with pytest.raises(ValueError, match="unknown option"):
        create_fastv(0.5, ratio=0.5)
    with pytest.raises(ValueError, match="budget"):
        create_fastv(0.0)


# ---------------------------------------------------------------------------------------------- decide


def test_keeps_the_most_attended_tokens_in_sequence_order():
    attention = [0.1, 0.5, 0.05, 0.3, 0.3, 0.01, 0.2, 0.4]
    tokens, calls = tokens_with_attention(attention)
    method = FastV(0.5, k=2)
    decision = method.decide(2, tokens, {"num_layers": 6})  # f = (3 - 2) / 4 = 0.25: keep 8 - floor(6) = 2
    assert decision.keep.tolist() == [False, True, False, False, False, False, False, True]
    assert calls == [1]  # one query row: the last prompt token
    assert decision.merge_into is None and decision.features is None


def test_ties_go_to_the_earlier_token():
    tokens, _ = tokens_with_attention([0.2, 0.2, 0.2, 0.2])
    decision = FastV(0.5, k=1).decide(1, tokens, {"num_layers": 3})  # f = 0.25 -> keep 4 - floor(3) = 1
    assert decision.keep.tolist() == [True, False, False, False]


@settings(max_examples=50, deadline=None)
@given(attention=st.lists(st.floats(0, 1, width=32), min_size=1, max_size=40), budget=st.floats(0.3, 1.0))
def test_keep_count_and_threshold(attention, budget):
    tokens, _ = tokens_with_attention(attention)
    method = FastV(budget, k=2)
    f = method.keep_fraction(10)
    keep = method.decide(2, tokens, {"num_layers": 10}).keep
    n = len(attention)
    assert int(keep.sum()) == method.expected_tokens_per_layer(n, 10)[-1]
    a = torch.tensor(attention)
    if 0 < int(keep.sum()) < n:
        assert a[keep].min() >= a[~keep].max()
    assert f <= 1.0


def test_refuses_layer_without_attention():
    tokens, _ = tokens_with_attention([0.1, 0.2])
    tokens.relevance_from_attention = None
    with pytest.raises(ValueError, match="needs attention"):
        FastV(0.5).decide(2, tokens, {"num_layers": 8})


# ------------------------------------------------------------------------------------------ on a model


def test_tokens_per_layer_follow_the_budget_rule(family, model):
    inputs = build_inputs(family, model)
    method = FastV(0.5, k=2)
    with torch.no_grad(), hieravid.apply(model, method) as handle:
        model(**inputs)
    stats = handle.last_stats
    n = num_visual_tokens(family, model, inputs)
    assert stats.per_sample_tokens_per_layer[0] == method.expected_tokens_per_layer(n, 8)
    assert stats.per_sample_tokens_per_layer[0][:2] == [n, n]
    assert stats.achieved_budget == pytest.approx(0.5, abs=1 / n)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_keeps_the_tokens_the_layer_before_k_attends_to_most(family, k):
    """The original ranking: the last token's attention in layer K - 1, heads averaged, as the unpatched
    model returns it under eager attention; the top fraction f enters layer K."""
    model = build_model(family, attn_implementation="eager")
    inputs = build_inputs(family, model)
    with torch.no_grad():
        attention = model(**inputs, output_attentions=True).attentions[k - 1][0, :, -1].mean(dim=0)  # (L,)
        with hieravid.apply(model, FastV(0.5, k=k)) as handle:
            model(**inputs)
    visual = torch.cat([torch.arange(start, end) for start, end in video_layout(family, model, inputs).frame_spans[0]])
    kept = keep_count(FastV(0.5, k=k).keep_fraction(8), visual.numel())
    expected = visual[torch.sort(torch.topk(attention[visual], kept).indices).values]
    positions = handle.last_stats.kept_positions[k][0]  # the columns entering layer k
    assert positions[torch.isin(positions, visual)].tolist() == expected.tolist()
