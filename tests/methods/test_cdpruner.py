"""Tests of the CDPruner baseline (hieravid.methods.cdpruner)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import build_inputs, num_visual_tokens

import hieravid
from hieravid.methods.base import VideoTokens
from hieravid.methods.budget import keep_count
from hieravid.methods.cdpruner import CDPruner, cdpruner_relevance, cdpruner_select, create_cdpruner

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def flat_tokens(x: torch.Tensor, instruction: torch.Tensor | None) -> VideoTokens:
    n = x.shape[0]
    return VideoTokens(
        features=x, frame=torch.zeros(n, dtype=torch.long), slot=torch.arange(n), num_frames=1, num_slots=n,
        instruction=instruction,
    )


def ref_relevance(x: torch.Tensor, text: torch.Tensor, sign: float = -1.0) -> torch.Tensor:
    """The official code: mean over text tokens of sign * cos, then (u - min + 1e-6) / (max - min)."""
    xn = x.double() / x.double().norm(dim=1, keepdim=True)
    tn = text.double() / text.double().norm(dim=1, keepdim=True)
    u = (sign * (xn @ tn.T)).mean(dim=1)
    return (u - u.min() + 1e-6) / (u.max() - u.min())


def ref_greedy_dpp(x: torch.Tensor, r: torch.Tensor, k: int) -> tuple[list[int], list[float], float]:
    """Greedy MAP by brute force: add the token that maximises det(L~_S) with
    L~ = diag(r) X X^T diag(r), X L2-normalised (float64). Returns the picks in order, the gain of each
    (det(L~_S+j) / det(L~_S), the residual variance) and the largest kernel diagonal."""
    xn = x.double() / x.double().norm(dim=1, keepdim=True)
    kernel = r.double()[:, None] * (xn @ xn.T) * r.double()[None, :]
    picks: list[int] = []
    gains: list[float] = []
    previous = 1.0
    for _ in range(k):
        best, best_det = -1, -math.inf
        for j in range(x.shape[0]):
            if j in picks:
                continue
            s = picks + [j]
            det = float(torch.linalg.det(kernel[s][:, s]))
            if det > best_det:
                best, best_det = j, det
        picks.append(best)
        gains.append(best_det / previous if previous > 0 else 0.0)
        previous = best_det
    return picks, gains, float(kernel.diagonal().max())


def assert_greedy_picks(keep: torch.Tensor, x: torch.Tensor, r: torch.Tensor, k: int) -> None:
    """``keep`` holds the brute-force greedy picks for as long as their gains are well above round-off
    (1% of the largest diagonal: ``greedy_map`` ranks candidates below its relative rank floor by their
    diagonal instead of by noise), and exactly k tokens."""
    picks, gains, top = ref_greedy_dpp(x, r, k)
    assert int(keep.sum()) == k
    for p, g in zip(picks, gains):
        if g < 1e-2 * top:
            break
        assert keep[p], (picks, gains)


# -------------------------------------------------------------------------------------------- relevance


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 30), n_text=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_relevance_is_the_official_formula(n, n_text, seed):
    gen = torch.Generator().manual_seed(seed)
    x, text = torch.randn(n, 8, generator=gen), torch.randn(n_text, 8, generator=gen)
    torch.testing.assert_close(cdpruner_relevance(x, text).double(), ref_relevance(x, text), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        cdpruner_relevance(x, text, sign="positive").double(), ref_relevance(x, text, sign=1.0), rtol=1e-4, atol=1e-5
    )


def test_negative_sign_favours_tokens_unlike_the_instruction():
    text = torch.tensor([[1.0, 0.0, 0.0]])
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    r = cdpruner_relevance(x, text)
    assert r.argmax() == 2 and r.argmin() == 0
    assert cdpruner_relevance(x, text, sign="positive").argmax() == 0


def test_no_instruction_gives_uniform_relevance():
    x = torch.randn(6, 4)
    for text in (None, torch.zeros(0, 4)):
        assert cdpruner_relevance(x, text).tolist() == [1.0] * 6


def test_theta_exponentiates():
    """exp(alpha r) up to one factor (the kernel's scale does not change the greedy picks): largest 1."""
    x, text = torch.randn(7, 4), torch.randn(2, 4)
    plain = cdpruner_relevance(x, text)
    torch.testing.assert_close(cdpruner_relevance(x, text, theta=0.5), torch.exp(0.5 * (plain - plain.max())))
    assert cdpruner_relevance(x, text, theta=0.0).tolist() == [1.0] * 7  # alpha = 0: diversity only


@pytest.mark.parametrize("theta", [0.99, 0.995, 0.999])
def test_theta_near_one_stays_finite_and_keeps_the_picks(theta):
    """alpha = theta / (2 (1 - theta)) reaches ~500: exp(alpha r) itself overflows float32 there."""
    gen = torch.Generator().manual_seed(0)
    x, text = torch.randn(50, 16, generator=gen), torch.randn(3, 16, generator=gen)
    r = cdpruner_relevance(x, text, theta=theta)
    assert torch.isfinite(r).all() and r.max() == 1.0
    alpha = theta / (2 * (1 - theta))
    exact = torch.exp(alpha * cdpruner_relevance(x, text).double())  # float64 holds e^500
    assert torch.equal(cdpruner_select(x, r, 10), cdpruner_select(x, (exact / exact.max()).float(), 10))


# ------------------------------------------------------------------------------------------------ DPP


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 10), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_greedy_map_matches_brute_force_determinants(n, seed, data):
    dim = 12  # rank >= n: every pick adds a direction
    k = data.draw(st.integers(0, n))
    gen = torch.Generator().manual_seed(seed)
    x, text = torch.randn(n, dim, generator=gen), torch.randn(3, dim, generator=gen)
    r = cdpruner_relevance(x, text)
    assert_greedy_picks(cdpruner_select(x, r, k), x, r, k)


def test_first_pick_is_the_most_relevant_token():
    x, text = torch.randn(9, 16), torch.randn(2, 16)
    r = cdpruner_relevance(x, text)
    assert cdpruner_select(x, r, 1).nonzero().item() == int(r.argmax())


def test_beyond_the_rank_still_distinct_tokens():
    x = torch.randn(2, 6).repeat(4, 1)  # 8 tokens, rank 2
    keep = cdpruner_select(x, torch.ones(8), 5)
    assert int(keep.sum()) == 5
    assert not torch.isnan(x).any()


def test_bad_count():
    with pytest.raises(ValueError, match="k must be"):
        cdpruner_select(torch.randn(3, 2), torch.ones(3), 4)


# ------------------------------------------------------------------------------------------ the method


def test_budget_rule_and_decision_points():
    method = CDPruner(0.1)
    assert method.keep_fraction(28) == pytest.approx(0.1)
    assert method.decision_layers(28) == [0]
    assert method.expected_tokens_per_layer(1000, 4) == [keep_count(0.1, 1000)] * 4
    assert CDPruner(1.0).decision_layers(28) == []


@settings(max_examples=30, deadline=None)
@given(budget=st.floats(0.01, 1.0), n=st.integers(1, 30))
def test_decide_keeps_exactly_the_budget(budget, n):
    tokens = flat_tokens(torch.randn(n, 6), torch.randn(3, 6))
    decision = CDPruner(budget).decide(0, tokens, {"num_layers": 8})
    assert int(decision.keep.sum()) == keep_count(budget, n)
    assert decision.merge_into is None and decision.features is None


def test_decide_uses_the_instruction():
    gen = torch.Generator().manual_seed(4)
    x, text = torch.randn(20, 16, generator=gen), torch.randn(4, 16, generator=gen)
    keep = CDPruner(0.25).decide(0, flat_tokens(x, text), {"num_layers": 8}).keep
    assert_greedy_picks(keep, x, ref_relevance(x, text).float(), 5)


def test_options_and_factory():
    method = create_cdpruner(0.3, relevance_sign="positive", theta=0.5)
    assert isinstance(method, CDPruner) and method.name == "cdpruner"
    assert (method.relevance_sign, method.theta) == ("positive", 0.5)
    with pytest.raises(ValueError, match="unknown option"):
        create_cdpruner(0.3, lam=1.0)
    with pytest.raises(ValueError, match="relevance_sign"):
        CDPruner(0.3, relevance_sign="up")
    for theta in (1.0, -0.1, float("nan"), True):
        with pytest.raises(ValueError, match="theta"):
            CDPruner(0.3, theta=theta)
    with pytest.raises(ValueError, match="layer 0"):
        CDPruner(0.3).decide(3, flat_tokens(torch.randn(3, 2), None), {"num_layers": 8})


# ------------------------------------------------------------------------------------------ on a model


def test_tokens_per_layer_follow_the_budget_rule(family, model):
    inputs = build_inputs(family, model)
    method = CDPruner(0.3)
    with torch.no_grad(), hieravid.apply(model, method) as handle:
        model(**inputs)
    n = num_visual_tokens(family, model, inputs)
    assert handle.last_stats.per_sample_tokens_per_layer[0] == method.expected_tokens_per_layer(n, 8)


def test_the_runtime_gives_the_instruction_at_layer_zero(family, model):
    seen = []

    class Recording(CDPruner):
        def decide(self, layer, tokens, state):
            seen.append((layer, tokens.instruction.shape, tokens.features.shape))
            return super().decide(layer, tokens, state)

    inputs = build_inputs(family, model, prompt_tokens=8)
    with torch.no_grad(), hieravid.apply(model, Recording(0.3)):
        model(**inputs)
    assert len(seen) == 1
    layer, instruction_shape, feature_shape = seen[0]
    assert layer == 0 and instruction_shape[0] >= 8 and instruction_shape[1] == feature_shape[1]
