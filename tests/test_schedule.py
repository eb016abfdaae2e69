"""Tests of hieravid.schedule: presets, solver, boundaries and token bookkeeping."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hieravid.methods.budget import keep_count
from hieravid.schedule import MIN_BUDGET, PRESETS, Schedule, pruned_count, solve_schedule, stage_boundaries

# The paper's table (spec section 3), written out by hand.
PAPER_TABLE = {
    0.3: ((0.5, 0.3, 0.3, 0.57), (0.5, 0.35, 0.245, 0.10535), 0.300),
    0.2: ((0.5, 0.5, 0.7, 0.8), (0.5, 0.25, 0.075, 0.015), 0.210),
    0.1: ((0.7, 0.6, 0.85, 0.9), (0.3, 0.12, 0.018, 0.0018), 0.110),
}


@pytest.mark.parametrize("budget", sorted(PAPER_TABLE))
def test_presets_match_the_paper_table(budget: float) -> None:
    ratios, kept, achieved = PAPER_TABLE[budget]
    schedule = solve_schedule(budget)
    assert schedule.ratios == ratios
    assert PRESETS[budget] == ratios
    assert schedule.kept_fractions == pytest.approx(kept, abs=1e-12)
    assert round(schedule.achieved_budget, 3) == pytest.approx(achieved)


def test_presets_can_be_bypassed() -> None:
    solved = solve_schedule(0.3, use_presets=False)
    assert solved.ratios != PRESETS[0.3]
    assert solved.achieved_budget == pytest.approx(0.3, abs=1e-12)
    # Documented rule: stage 1 keeps sqrt(B) here (the midpoint (0.3 + 1.2) / 2 = 0.75 is larger).
    assert solved.kept_fractions[0] == pytest.approx(math.sqrt(0.3), abs=1e-12)
    assert solved.kept_fractions[0] == pytest.approx(0.5477, abs=1e-4)


def test_presets_only_for_four_stages() -> None:
    solved = solve_schedule(0.3, 28, 3)
    assert len(solved.ratios) == 3
    assert solved.achieved_budget == pytest.approx(0.3, abs=1e-12)


@pytest.mark.parametrize("budget", [0.3, 0.2, 0.1])
def test_presets_only_for_stages_of_equal_length(budget: float) -> None:
    assert solve_schedule(budget, 24, 4).ratios == PRESETS[budget]  # 6 layers per stage: the paper's budget
    unequal = solve_schedule(budget, 7, 4)  # stages of 2, 2, 1, 2 layers: the presets would miss it
    assert unequal.ratios != PRESETS[budget]
    assert unequal.achieved_budget == pytest.approx(budget, abs=1e-12)


def test_solver_rule_geometric_decay() -> None:
    """Later stages keep q, q^2, q^3 of the tokens entering them (one q for the whole schedule)."""
    s = solve_schedule(0.25, 28, 4, use_presets=False)
    q = 1.0 - s.ratios[1]
    assert 1.0 - s.ratios[2] == pytest.approx(q**2, rel=1e-12)
    assert 1.0 - s.ratios[3] == pytest.approx(q**3, rel=1e-12)
    assert s.ratios[0] == pytest.approx(0.5, abs=1e-12)  # sqrt(0.25)


def test_solver_uses_midpoint_when_sqrt_is_too_large() -> None:
    # L = 4, S = 2: w_1 = 2, feasible f_1 in [B, 2B]; for B = 0.01 the midpoint 0.015 < sqrt(B) = 0.1.
    s = solve_schedule(0.01, 4, 2)
    assert s.kept_fractions[0] == pytest.approx(0.015, rel=1e-12)
    # Stage 2 must then keep (2 * 0.01 - 0.015) / 0.015 of the tokens entering it.
    assert 1.0 - s.ratios[1] == pytest.approx(1.0 / 3.0, rel=1e-9)


def test_one_stage_and_full_budget() -> None:
    assert solve_schedule(0.37, 10, 1).ratios == pytest.approx((0.63,), abs=1e-15)
    assert solve_schedule(1.0).ratios == (0.0, 0.0, 0.0, 0.0)
    assert solve_schedule(1.0, 7, 3).achieved_budget == 1.0


@settings(max_examples=300, deadline=None)
@given(
    budget=st.floats(min_value=1e-9, max_value=1.0, exclude_min=False),
    num_layers=st.integers(min_value=1, max_value=80),
    data=st.data(),
)
def test_solver_hits_budget_and_is_monotone(budget: float, num_layers: int, data: st.DataObject) -> None:
    num_stages = data.draw(st.integers(min_value=1, max_value=min(num_layers, 6)))
    s = solve_schedule(budget, num_layers, num_stages, use_presets=False)
    assert len(s.ratios) == num_stages
    assert abs(s.achieved_budget - budget) < 1e-6
    assert all(0.0 <= r < 1.0 for r in s.ratios)
    kept = s.kept_fractions
    assert all(a >= b for a, b in zip(kept, kept[1:]))
    assert all(a <= b for a, b in zip(s.ratios[1:], s.ratios[2:]))  # R_2 <= R_3 <= ...
    assert 0.0 < kept[-1] <= kept[0] <= 1.0


@settings(max_examples=300, deadline=None)
@given(
    budget=st.floats(min_value=1e-6, max_value=1.0),
    num_layers=st.integers(min_value=1, max_value=60),
    min_ratio=st.sampled_from([0.05, 0.1, 0.3]),
    data=st.data(),
)
def test_solver_with_a_smallest_stage_ratio(budget: float, num_layers: int, min_ratio: float, data) -> None:
    """Every in-LLM stage removes nothing or at least min_stage_ratio; the budget is still hit, kept
    fractions still fall, and a schedule that already satisfies the floor is left as it was."""
    num_stages = data.draw(st.integers(min_value=1, max_value=min(num_layers, 6)))
    s = solve_schedule(budget, num_layers, num_stages, use_presets=False, min_stage_ratio=min_ratio)
    free = solve_schedule(budget, num_layers, num_stages, use_presets=False)
    assert len(s.ratios) == num_stages
    assert abs(s.achieved_budget - budget) < 1e-6
    assert all(r == 0.0 or r >= min_ratio for r in s.ratios[1:])
    kept = s.kept_fractions
    assert all(a >= b for a, b in zip(kept, kept[1:]))
    nonzero = [r for r in s.ratios[1:] if r > 0]
    assert all(a <= b for a, b in zip(nonzero, nonzero[1:]))
    assert all(r == 0.0 for r in s.ratios[1 : num_stages - len(nonzero)])  # the zeros come first
    if all(r >= min_ratio for r in free.ratios[1:]):
        assert s.ratios == free.ratios


def test_solver_skips_in_llm_stages_eq5_cannot_realise() -> None:
    # B = 0.9 over 24 layers asks R_2 = 0.021 unconstrained; Eq. 5 keeps at most 95% of a segment.
    assert solve_schedule(0.9, 24).ratios[1] == pytest.approx(0.0213, abs=1e-4)
    s = solve_schedule(0.9, 24, min_stage_ratio=0.05)
    assert s.ratios[1] == 0.0 and min(s.ratios[2:]) >= 0.05
    assert solve_schedule(0.99, 24, min_stage_ratio=0.05).ratios == pytest.approx((0.01, 0.0, 0.0, 0.0))
    assert solve_schedule(0.3, 28, min_stage_ratio=0.05).ratios == PRESETS[0.3]  # presets are untouched
    assert solve_schedule(0.5, 28, min_stage_ratio=1.0).ratios == (0.5, 0.0, 0.0, 0.0)  # keep_clip (0, 0)
    with pytest.raises(ValueError, match="min_stage_ratio must be a number in"):
        solve_schedule(0.5, 28, min_stage_ratio=1.5)


@pytest.mark.parametrize("budget", sorted(PRESETS))
def test_a_preset_below_the_smallest_stage_ratio_is_solved_instead(budget: float) -> None:
    # keep_clip (0.05, 0.6): Eq. 5 keeps at most 60% of a segment, so a stage removes at least 40%; the
    # 0.3 preset's 0.3 would have kept fewer tokens than the schedule's budget.
    s = solve_schedule(budget, 28, min_stage_ratio=0.4)
    assert all(r == 0 or r >= 0.4 for r in s.ratios[1:])
    if min(PRESETS[budget][1:]) >= 0.4:
        assert s.ratios == PRESETS[budget]
    else:
        assert s.achieved_budget == pytest.approx(budget, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(budget=st.floats(min_value=1e-9, max_value=1.0), data=st.data())
def test_achieved_budget_equals_a_direct_layer_loop(budget: float, data: st.DataObject) -> None:
    num_layers = data.draw(st.integers(min_value=1, max_value=60))
    num_stages = data.draw(st.integers(min_value=1, max_value=min(num_layers, 6)))
    s = solve_schedule(budget, num_layers, num_stages)
    # Independent reference: walk the layers, switching stage at round(k L / S).
    starts = {round(k * num_layers / num_stages): k for k in range(1, num_stages)}
    kept, stage, total, fractions = 1.0 - s.ratios[0], 0, 0.0, []
    for layer in range(num_layers):
        if layer in starts:
            stage = starts[layer]
            kept *= 1.0 - s.ratios[stage]
        fractions.append(kept)
        total += kept
    assert s.layer_fractions() == pytest.approx(fractions, rel=1e-12)
    assert s.achieved_budget == pytest.approx(total / num_layers, rel=1e-12)
    assert len(s.layer_fractions()) == num_layers


def test_layer_weighted_budget_with_unequal_stages() -> None:
    # L = 10, S = 4: boundaries [0, 2, 5, 8] (round(2.5) = 2, round(5.0) = 5, round(7.5) = 8).
    s = Schedule((0.5, 0.5, 0.5, 0.5), 10)
    assert s.boundaries == [0, 2, 5, 8]
    expected = (2 * 0.5 + 3 * 0.25 + 3 * 0.125 + 2 * 0.0625) / 10
    assert s.achieved_budget == pytest.approx(expected, rel=1e-15)
    # Not the unweighted stage mean.
    assert s.achieved_budget != pytest.approx((0.5 + 0.25 + 0.125 + 0.0625) / 4)


def test_boundaries() -> None:
    assert stage_boundaries(28, 4) == [0, 7, 14, 21]
    assert stage_boundaries(5, 1) == [0]
    assert stage_boundaries(3, 3) == [0, 1, 2]
    assert stage_boundaries(32, 3) == [0, 11, 21]


@given(num_layers=st.integers(1, 200), data=st.data())
def test_boundaries_give_every_stage_a_layer(num_layers: int, data: st.DataObject) -> None:
    num_stages = data.draw(st.integers(1, num_layers))
    b = stage_boundaries(num_layers, num_stages) + [num_layers]
    assert b[0] == 0 and len(b) == num_stages + 1
    assert all(y > x for x, y in zip(b, b[1:]))


@pytest.mark.parametrize("layers,stages", [(3, 4), (0, 0), (5, 0)])
def test_boundaries_reject_bad_sizes(layers: int, stages: int) -> None:
    with pytest.raises(ValueError):
        stage_boundaries(layers, stages)


def test_tokens_per_layer_llava_video() -> None:
    s = solve_schedule(0.3)
    tokens = s.tokens_per_layer(10816)
    assert len(tokens) == 28
    assert tokens[0] == 5408 == 10816 - math.floor(0.5 * 10816)
    # Sequential integer counts, by hand: 5408 -> 5408 - 1622 = 3786 -> 3786 - 1135 = 2651
    # -> 2651 - 1511 = 1140.
    assert tokens[::7] == [5408, 3786, 2651, 1140]
    assert tokens[6] == 5408 and tokens[7] == 3786
    assert s.fractional_tokens_per_layer(10816)[::7] == pytest.approx(
        [5408.0, 3785.6, 2649.92, 1139.4656], rel=1e-12
    )


def test_first_limit_caps_stage_one_and_the_later_stages_follow() -> None:
    s = solve_schedule(0.3)  # rho 0.5, then 0.3, 0.3, 0.57
    # 169 tokens (one frame) that stage 1 cannot touch: the later stages prune what is left.
    # 169 -> 169 - floor(0.3 * 169) = 119 -> 119 - 35 = 84 -> 84 - 47 = 37
    assert s.stage_tokens(169, first_limit=0) == [169, 119, 84, 37]
    assert s.fractional_tokens_per_layer(169, first_limit=0)[::7] == pytest.approx([169, 118.3, 82.81, 35.6083])
    # 338 tokens (two frames): floor(0.5 * 338) = 169 = the limit, so nothing changes.
    assert s.stage_tokens(338, first_limit=169) == s.stage_tokens(338) == [169, 119, 84, 37]
    assert s.fractional_tokens_per_layer(338, first_limit=169) == s.fractional_tokens_per_layer(338)
    assert s.tokens_per_layer(169, first_limit=0)[::7] == [169, 119, 84, 37]


def test_describe_mentions_each_stage() -> None:
    text = solve_schedule(0.2).describe(6272)
    assert "0.2100" in text and "[21,28)" in text and "3136" in text
    assert str(solve_schedule(0.2)).count("\n") == 5
    # Ten tokens cannot go below one per layer: the whole-token budget is 0.1, not the fractions' 0.01.
    assert "with 10 tokens, in whole tokens: 0.1000" in solve_schedule(0.01).describe(10)


@pytest.mark.parametrize("bad", [0, 0.0, 1.5, -0.1, float("nan"), float("inf")])
def test_bad_budgets_are_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="budget"):
        solve_schedule(bad)


def test_tiny_budget_is_rejected_with_a_fix() -> None:
    with pytest.raises(ValueError, match="budget"):
        solve_schedule(1e-12)


@pytest.mark.parametrize("ratios,name", [((1.0, 0.1), "rho"), ((0.1, -0.2), "R_2"), ((0.1, 0.2, 1.2), "R_3")])
def test_schedule_rejects_bad_ratios(ratios: tuple[float, ...], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Schedule(ratios, 28)


def test_schedule_rejects_more_stages_than_layers() -> None:
    with pytest.raises(ValueError, match="num_stages"):
        Schedule((0.1, 0.1, 0.1), 2)


@settings(max_examples=300, deadline=None)
@given(ratio_thousandths=st.integers(0, 999), num_tokens=st.integers(0, 100_000))
def test_counts_floor_the_decimal_product(ratio_thousandths: int, num_tokens: int) -> None:
    """floor(r * n) for a decimal r, in exact arithmetic: the float product 0.7 * 90 is 62.99999999999999,
    the count 63. Budgets keep n - floor((1 - B) n) the same way."""
    ratio = Fraction(ratio_thousandths, 1000)
    assert pruned_count(ratio_thousandths / 1000, num_tokens) == math.floor(ratio * num_tokens)
    assert keep_count(ratio_thousandths / 1000, num_tokens) == num_tokens - math.floor((1 - ratio) * num_tokens)


def test_counts_whole_decimal_products() -> None:
    assert pruned_count(0.7, 90) == 63
    assert pruned_count(0.57, 100) == 57
    assert keep_count(0.9, 10) == 9  # (1 - 0.9) * 10 is 0.9999999999999998 in floats


def test_a_decay_that_underflows_is_refused_naming_fewer_stages():
    with pytest.raises(ValueError, match="use fewer stages"):
        solve_schedule(1e-5, 85, 85)
    assert len(solve_schedule(1e-5, 85, 8).ratios) == 8


def first_refused(budget: float, num_layers: int) -> int | None:
    """The fewest stages float64 cannot solve at ``budget`` over ``num_layers`` (as HieraVid calls it)."""
    for stages in range(2, num_layers + 1):
        try:
            solve_schedule(budget, num_layers, stages, min_stage_ratio=0.05)
        except ValueError:
            return stages
    return None


def test_float64_refuses_only_tiny_budgets_over_many_stages_as_the_readme_says():
    assert (first_refused(5e-4, 64), first_refused(5e-4, 200)) == (47, 80)
    assert first_refused(1e-3, 59) == 47 and first_refused(MIN_BUDGET, 58) is None
    assert first_refused(1e-4, 48) is None and first_refused(2e-3, 64) is None and first_refused(2e-3, 200) is None


def test_numpy_integers_are_taken_as_python_ones_and_stay_json_ready():
    import json

    import numpy as np

    for schedule in (Schedule((0.1,) * 4, np.int64(8)), solve_schedule(0.3, np.int64(28), 4)):
        assert type(schedule.num_layers) is int
        json.dumps(schedule.to_dict())
    schedule = Schedule((0.5, 0.3, 0.3, 0.57), 28)
    assert schedule.stage_tokens(np.int64(100)) == schedule.stage_tokens(100)
    assert schedule.stage_tokens(100, first_limit=np.int64(20))[0] == 80


@pytest.mark.parametrize("first_limit", [-5, 2.5, "3", True])
def test_a_bad_first_limit_is_refused(first_limit):
    with pytest.raises(ValueError, match="first_limit"):
        Schedule((0.5, 0.3, 0.3, 0.57), 28).stage_tokens(100, first_limit=first_limit)


@pytest.mark.parametrize("value", ["0.05", None, float("nan"), -0.1])
def test_a_bad_min_stage_ratio_is_refused_naming_it(value):
    with pytest.raises(ValueError, match="min_stage_ratio must be a number in"):
        solve_schedule(0.3, min_stage_ratio=value)
