"""Tests of the PyramidDrop baseline (hieravid.methods.pyramiddrop)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import build_inputs, num_visual_tokens

import hieravid
from hieravid.methods.base import VideoTokens
from hieravid.methods.budget import keep_count
from hieravid.methods.pyramiddrop import PyramidDrop, create_pyramiddrop, evenly_spaced, solve_lambda
from hieravid.schedule import stage_boundaries

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def layer_budget(kept_per_stage: list[float], num_layers: int, num_stages: int) -> float:
    starts = stage_boundaries(num_layers, num_stages) + [num_layers]
    return sum((starts[k + 1] - starts[k]) * f for k, f in enumerate(kept_per_stage)) / num_layers


def tokens(n: int, attention: list[float] | None = None, instruction: torch.Tensor | None = None, dim: int = 8):
    gen = torch.Generator().manual_seed(n)
    calls: list[int] = []

    def relevance(query_rows: int = 1) -> torch.Tensor:
        calls.append(query_rows)
        return torch.tensor(attention, dtype=torch.float32)

    t = VideoTokens(
        features=torch.randn(n, dim, generator=gen), frame=torch.zeros(n, dtype=torch.long), slot=torch.arange(n),
        num_frames=1, num_slots=n, relevance_from_attention=None if attention is None else relevance,
        instruction=torch.randn(3, dim, generator=gen) if instruction is None else instruction,
    )
    return t, calls


# ------------------------------------------------------------------------------------------ budget rule


def test_paper_lambda_gives_the_paper_budget():
    # lambda = 0.5 over 4 equal stages: kept 1, 0.5, 0.25, 0.125 -> 0.46875.
    assert solve_lambda(0.46875, 28) == pytest.approx(0.5, abs=1e-12)
    method = PyramidDrop(lambda_=0.5)
    assert method.kept_fractions(28) == [1.0, 0.5, 0.25, 0.125]
    assert method.achieved_budget(28) == pytest.approx(0.46875)
    assert method.decision_layers(28) == [7, 14, 21]
    assert method.expected_tokens_per_layer(1000, 28) == [1000] * 7 + [500] * 7 + [250] * 7 + [125] * 7


@settings(max_examples=100, deadline=None)
@given(
    num_layers=st.integers(4, 48),
    num_stages=st.integers(1, 4),
    first=st.sampled_from([1.0, 0.8, 0.5, 0.25]),
    u=st.floats(0.0, 1.0),
)
def test_solved_lambda_hits_the_budget(num_layers, num_stages, first, u):
    starts = stage_boundaries(num_layers, num_stages) + [num_layers]
    lowest = first * (starts[1] - starts[0]) / num_layers
    budget = lowest + u * (first - lowest)
    if budget <= 0:
        return
    method = PyramidDrop(budget, stages=num_stages, first_stage_keep=first)
    lam = method.keep_ratio(num_layers)
    assert 0.0 <= lam <= 1.0
    assert layer_budget(method.kept_fractions(num_layers), num_layers, num_stages) == pytest.approx(budget, abs=1e-9)
    assert method.achieved_budget(num_layers) == pytest.approx(budget, abs=1e-9)


def test_budget_below_the_first_stage_names_the_minimum_and_the_option():
    with pytest.raises(ValueError, match=r"smallest reachable budget is 0\.2500.*first_stage_keep"):
        PyramidDrop(0.2).decision_layers(28)
    method = PyramidDrop(0.2, first_stage_keep=0.5)  # now reachable: minimum 0.125
    assert method.decision_layers(28) == [0, 7, 14, 21]
    assert method.achieved_budget(28) == pytest.approx(0.2)
    with pytest.raises(ValueError, match=r"use budget >= 0\.0179 or a smaller first_stage_keep") as refused:
        PyramidDrop(0.01, first_stage_keep=0.5, stages=28).decision_layers(28)  # a stage per layer already
    assert "more stages" not in str(refused.value)
    for stages in (6, 7):  # 8 layers: the first stage already has 1 layer, as with a stage per layer
        with pytest.raises(ValueError, match=r"smallest reachable budget is 0\.1250") as refused:
            PyramidDrop(0.05, stages=stages).decision_layers(8)
        assert "more stages" not in str(refused.value)
    with pytest.raises(ValueError, match="more stages"):
        PyramidDrop(0.05, stages=4).decision_layers(8)


def test_budget_above_first_stage_keep_is_refused():
    with pytest.raises(ValueError, match="raise first_stage_keep"):
        PyramidDrop(0.6, first_stage_keep=0.5).decision_layers(28)


def test_uneven_stages():
    # L = 10, S = 4: boundaries [0, 2, 5, 8], widths [2, 3, 3, 2].
    method = PyramidDrop(0.5)
    assert method.decision_layers(10) == [2, 5, 8]
    lam = method.keep_ratio(10)
    assert (2 + 3 * lam + 3 * lam**2 + 2 * lam**3) / 10 == pytest.approx(0.5)


def test_budget_one_and_single_stage():
    assert PyramidDrop(1.0).decision_layers(28) == []
    assert PyramidDrop(1.0, stages=1).decision_layers(28) == []
    with pytest.raises(ValueError, match="smallest reachable"):
        PyramidDrop(0.5, stages=1).decision_layers(28)
    assert PyramidDrop(0.5, stages=1, first_stage_keep=0.5).decision_layers(28) == [0]


def test_lambda_override_ignores_the_budget():
    method = create_pyramiddrop(0.3, lambda_=0.5)
    assert method.keep_ratio(28) == 0.5
    assert method.achieved_budget(28) == pytest.approx(0.46875)
    assert PyramidDrop(lambda_=1.0).decision_layers(28) == []


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(stages=0), "stages"),
        (dict(stages=True), "stages"),
        (dict(lambda_=1.5), "lambda_"),
        (dict(lambda_=-0.1), "lambda_"),
        (dict(first_stage_keep=0.0), "first_stage_keep .*kept before layer 0"),
        (dict(first_stage_keep=1.2), "first_stage_keep .*kept before layer 0"),
        (dict(first_stage_keep="all"), "first_stage_keep .*kept before layer 0"),
        (dict(ratio=0.5), "unknown option"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        create_pyramiddrop(0.5, **options)


def test_more_stages_than_layers_names_the_option_to_lower():
    for method in (PyramidDrop(0.5, stages=9), PyramidDrop(0.5, stages=9, lambda_=0.5)):
        for call in (method.decision_layers, method.achieved_budget, method.kept_fractions):
            with pytest.raises(ValueError, match=r"9 stages .* 8 decoder layers.*stages=8 or fewer") as info:
                call(8)
            assert "num_stages" not in str(info.value)  # HieraVid's option, not PyramidDrop's


# ---------------------------------------------------------------------------------------------- decide


def test_in_llm_stage_keeps_lambda_of_the_most_attended_tokens():
    method = PyramidDrop(lambda_=0.5)
    attention = [0.3, 0.1, 0.9, 0.2, 0.2, 0.5, 0.0]
    t, calls = tokens(7, attention)
    keep = method.decide(7, t, {"num_layers": 28}).keep
    assert keep.tolist() == [True, False, True, True, False, True, False]  # 7 - floor(3.5) = 4; tie: earlier
    assert int(keep.sum()) == keep_count(0.5, 7)
    assert calls == [1]


def test_layer_zero_keeps_the_tokens_closest_to_the_instruction():
    dim = 8
    instruction = torch.randn(4, dim, generator=torch.Generator().manual_seed(1))
    t, _ = tokens(20, instruction=instruction, dim=dim)
    method = PyramidDrop(0.4, first_stage_keep=0.5)
    keep = method.decide(0, t, {"num_layers": 8}).keep
    similarity = torch.stack(
        [torch.stack([F.cosine_similarity(f, q, dim=0) for q in instruction]).mean() for f in t.features]
    )
    assert int(keep.sum()) == 10
    assert similarity[keep].min() > similarity[~keep].max()


def test_layer_zero_without_instruction_spreads_the_tokens():
    t, _ = tokens(10, instruction=torch.zeros(0, 8))
    keep = PyramidDrop(0.4, first_stage_keep=0.4).decide(0, t, {"num_layers": 8}).keep
    assert torch.nonzero(keep).squeeze(1).tolist() == [0, 2, 5, 7]  # floor(i * 10 / 4)
    assert evenly_spaced(5, 5).all() and not evenly_spaced(5, 0).any()


def test_refuses_layer_without_attention():
    t, _ = tokens(4)
    with pytest.raises(ValueError, match="needs attention"):
        PyramidDrop(lambda_=0.5).decide(7, t, {"num_layers": 28})


# ------------------------------------------------------------------------------------------ on a model


@pytest.mark.parametrize("options", [dict(lambda_=0.5), dict(budget=0.2, first_stage_keep=0.6)])
def test_tokens_per_layer_follow_the_schedule(family, model, options):
    inputs = build_inputs(family, model)
    method = PyramidDrop(**options)
    with torch.no_grad(), hieravid.apply(model, method) as handle:
        model(**inputs)
    stats = handle.last_stats
    n = num_visual_tokens(family, model, inputs)
    assert stats.per_sample_tokens_per_layer[0] == method.expected_tokens_per_layer(n, 8)
    assert stats.achieved_budget == pytest.approx(method.achieved_budget(8), abs=2 / n)
