"""Tests of hieravid.methods.hieravid (stage decisions) and of HieraVidConfig validation."""

from __future__ import annotations

import math

import pytest
import torch
from loop_references import ref_bins
from synthetic import planted_video
from hypothesis import given, settings
from hypothesis import strategies as st

from hieravid.config import HieraVidConfig
from hieravid.methods.hieravid import decide_stage, decide_stage1, selector_for_stage


def ref_counts(present: list[int], z: list[float], ratio: float, delta: float = 0.1) -> list[int]:
    return [math.floor(n * min(max(1 - ratio + delta * zi, 0.05), 0.95)) for n, zi in zip(present, z)]


@st.composite
def planted_scenes(draw):
    num_frames = draw(st.integers(3, 10))
    num_scenes = draw(st.integers(1, min(num_frames, 4)))
    cuts = sorted(draw(st.lists(st.integers(1, num_frames - 1), min_size=num_scenes - 1,
                                max_size=num_scenes - 1, unique=True)))
    num_slots = draw(st.integers(3, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rho = draw(st.sampled_from([0.0, 0.125, 0.25, 0.5, 0.625]))  # dyadic: floor(rho*T*P) is unambiguous
    return num_frames, cuts, num_slots, seed, rho


# --------------------------------------------------------------------------------------------------
# Stage 1
# --------------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(scene=planted_scenes(), segmentation=st.sampled_from(["merge_ratio", "avgpool"]))
def test_decide_stage1_on_planted_scenes(scene, segmentation):
    num_frames, cuts, num_slots, seed, rho = scene
    x, expected = planted_video(seed, num_frames, cuts, num_slots)
    decision = decide_stage1(x, rho, HieraVidConfig(segmentation=segmentation))
    n_v = num_frames * num_slots
    kept = n_v - math.floor(rho * n_v)
    assert decision.num_kept == kept == int(decision.keep.sum())
    assert decision.features.shape == (kept, x.shape[2])
    assert decision.frame_segment.tolist() == expected
    assert decision.num_segments == len(cuts) + 1
    assert decision.z.shape == (len(cuts) + 1,)
    assert abs(float(decision.z.sum())) < 1e-4 * decision.num_segments
    assert not decision.keep[0].logical_not().any()  # frame 0 is always kept
    # Each token's segment is its anchor's: walk back to the latest kept frame in the same slot.
    for t in range(num_frames):
        for p in range(num_slots):
            a = t
            while not bool(decision.keep[a, p]):
                a -= 1
            assert int(decision.token_segment[t, p]) == expected[a]


def test_decide_stage1_merges_within_scenes_first():
    # Two scenes of 4 frames: within-scene tokens (cos ~1) are merged before any cross-scene one.
    x, expected = planted_video(11, 8, [4], 5)
    decision = decide_stage1(x, 0.5, HieraVidConfig())
    assert decision.frame_segment.tolist() == expected
    # K = 20 of the 30 within-scene candidates; frame 4 (a cut) keeps all its tokens.
    assert decision.num_kept == 20
    assert bool(decision.keep[4].all())


def test_decide_stage1_none_segmentation_one_segment():
    x, _ = planted_video(2, 6, [2, 4], 4)
    decision = decide_stage1(x, 0.5, HieraVidConfig(segmentation="none"))
    assert decision.frame_segment.tolist() == [0] * 6
    assert decision.z.tolist() == [0.0]
    assert (decision.token_segment == 0).all()


def test_decide_stage1_topk_indicator():
    x, expected = planted_video(4, 8, [3, 6], 4)
    decision = decide_stage1(x, 0.5, HieraVidConfig(overlap_indicator="topk"))
    assert decision.frame_segment.tolist() == expected


def test_decide_stage1_with_a_zero_token_does_not_crash():
    x, _ = planted_video(0, 4, [], 3)
    x[2, 1] = 0.0
    decision = decide_stage1(x, 0.7, HieraVidConfig())  # K = 8 of the 9 candidates
    assert decision.num_kept == 12 - 8


def test_decide_stage1_deterministic():
    x, _ = planted_video(5, 9, [3, 7], 6)
    cfg = HieraVidConfig()
    a, b = decide_stage1(x, 0.5, cfg), decide_stage1(x.clone(), 0.5, cfg)
    assert torch.equal(a.keep, b.keep)
    assert torch.equal(a.features, b.features)
    assert torch.equal(a.token_segment, b.token_segment)
    assert torch.equal(a.z, b.z)


# --------------------------------------------------------------------------------------------------
# In-LLM stages
# --------------------------------------------------------------------------------------------------


def stage_inputs(sizes: list[int], seed: int, dim: int = 24):
    gen = torch.Generator().manual_seed(seed)
    segment = torch.cat([torch.full((s,), i, dtype=torch.long) for i, s in enumerate(sizes)])
    hidden = torch.randn(segment.numel(), dim, generator=gen)
    relevance = 1e-3 + torch.rand(segment.numel(), generator=gen)
    z = torch.randn(len(sizes), generator=gen)
    z = (z - z.mean()) / (z.std(unbiased=False) + 1e-8) if len(sizes) > 1 else torch.zeros(1)
    return hidden, relevance, segment, z


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 30), min_size=1, max_size=5),
    seed=st.integers(0, 2**31 - 1),
    ratio=st.sampled_from([0.0, 0.3, 0.5, 0.57, 0.8, 0.9]),
    selector=st.sampled_from(["dpp", "bins"]),
)
def test_decide_stage_per_segment_counts_follow_eq5(sizes, seed, ratio, selector):
    hidden, relevance, segment, z = stage_inputs(sizes, seed)
    keep = decide_stage(hidden, relevance, segment, z, ratio, HieraVidConfig(), selector=selector)
    assert keep.dtype == torch.bool and keep.shape == segment.shape
    counts = torch.bincount(segment[keep], minlength=len(sizes)).tolist()
    assert counts == ref_counts(sizes, z.tolist(), ratio)
    if selector == "bins":
        k = ref_counts(sizes, z.tolist(), ratio)
        assert keep.tolist() == ref_bins(relevance.tolist(), segment.tolist(), k)


def test_decide_stage_exact_total_and_delta():
    hidden, relevance, segment, z = stage_inputs([13, 29, 8], 3)
    keep = decide_stage(hidden, relevance, segment, z, 0.57, HieraVidConfig(exact_total=True))
    assert int(keep.sum()) == 50 - math.floor(0.57 * 50)
    keep = decide_stage(hidden, relevance, segment, z, 0.5, HieraVidConfig(delta=0.3))
    counts = torch.bincount(segment[keep], minlength=3).tolist()
    assert counts == ref_counts([13, 29, 8], z.tolist(), 0.5, delta=0.3)


def test_decide_stage_dpp_prefers_diverse_tokens():
    # One segment: 4 copies of one direction and 2 other directions, equal relevance; keep 3.
    e = torch.eye(3)
    hidden = torch.stack([e[0], e[0], e[0], e[0], e[1], e[2]])
    keep = decide_stage(hidden, torch.ones(6), torch.zeros(6, dtype=torch.long), torch.zeros(1), 0.5, HieraVidConfig())
    assert keep.tolist() == [True, False, False, False, True, True]


def test_decide_stage_deterministic():
    hidden, relevance, segment, z = stage_inputs([20, 35, 9, 14], 8)
    for selector in ("dpp", "bins"):
        first = decide_stage(hidden, relevance, segment, z, 0.6, HieraVidConfig(), selector=selector)
        second = decide_stage(hidden.clone(), relevance.clone(), segment.clone(), z.clone(), 0.6, HieraVidConfig(),
                              selector=selector)
        assert torch.equal(first, second)


def test_decide_stage_is_the_same_for_every_greedy_backend():
    gen = torch.Generator().manual_seed(11)
    segment = torch.repeat_interleave(torch.arange(3), torch.tensor([40, 25, 70]))
    hidden = torch.randn(segment.numel(), 32, generator=gen)
    relevance = torch.rand(segment.numel(), generator=gen)
    z = torch.tensor([0.2, 0.5, 0.3])
    keeps = [
        decide_stage(hidden, relevance, segment, z, 0.4, HieraVidConfig(greedy_backend=backend))
        for backend in ("auto", "torch", "numba")
    ]
    assert torch.equal(keeps[0], keeps[1]) and torch.equal(keeps[0], keeps[2])
    assert 0 < int(keeps[0].sum()) < segment.numel()


def test_selector_for_stage():
    dpp, bins = HieraVidConfig(), HieraVidConfig(in_llm_selector="bins")
    ratios = (0.5, 0.3, 0.3, 0.57)
    assert [selector_for_stage(s, dpp, ratios) for s in (2, 3, 4)] == ["dpp", "dpp", "dpp"]
    assert [selector_for_stage(s, bins, ratios) for s in (2, 3, 4)] == ["bins", "dpp", "dpp"]
    # A high budget skips stage 2 (ratio 0): the bins go to the first in-LLM stage that prunes.
    skipped = (0.1, 0.0, 0.06, 0.2)
    assert [selector_for_stage(s, bins, skipped) for s in (2, 3, 4)] == ["dpp", "bins", "dpp"]
    for stage in (0, 1, 5):
        with pytest.raises(ValueError, match="stage"):
            selector_for_stage(stage, dpp, ratios)


# --------------------------------------------------------------------------------------------------
# HieraVidConfig validation
# --------------------------------------------------------------------------------------------------


def test_config_defaults_are_the_papers():
    cfg = HieraVidConfig()
    assert (cfg.tau, cfg.beta, cfg.lam, cfg.delta, cfg.keep_clip) == (0.6, 0.4, 0.5, 0.1, (0.05, 0.95))
    assert (cfg.segmentation, cfg.overlap_indicator, cfg.relevance_sign) == ("merge_ratio", "tau", "negative")
    assert (cfg.num_stages, cfg.relevance_query, cfg.in_llm_selector, cfg.eps) == (4, "last", "dpp", 1e-6)
    assert HieraVidConfig(budget=1.0).budget == 1.0


@pytest.mark.parametrize("budget", [0, 0.0, 1.5, float("nan"), -0.1, float("inf"), True, "0.3"])
def test_config_bad_budget(budget):
    with pytest.raises(ValueError, match="budget"):
        HieraVidConfig(budget=budget)


@pytest.mark.parametrize(
    ("ratios", "name"),
    [
        ((1.0, 0.3, 0.3, 0.57), "rho"),
        ((-0.1, 0.3, 0.3, 0.57), "rho"),
        ((0.5, 1.0, 0.3, 0.57), "R_2"),
        ((0.5, 0.3, -0.2, 0.57), "R_3"),
        ((0.5, 0.3, 0.3, float("nan")), "R_4"),
        ((0.5, 0.3, 0.3, 1.5), "R_4"),
    ],
)
def test_config_bad_ratios_name_the_stage(ratios, name):
    with pytest.raises(ValueError, match=name):
        HieraVidConfig(ratios=ratios)


@pytest.mark.parametrize("ratios", [0.5, "(0.5,0.2", "abcd", {0.5, 0.3, 0.3, 0.57}, (), []])
def test_config_ratios_that_are_no_list_name_the_form(ratios):
    with pytest.raises(ValueError, match=r"ratios must be a list of one pruning ratio per stage, e\.g\. \(0\.5, 0\.3"):
        HieraVidConfig(ratios=ratios)


def test_config_ratios_length_must_match_stages():
    with pytest.raises(ValueError, match="num_stages"):
        HieraVidConfig(ratios=(0.5, 0.3, 0.3))
    assert HieraVidConfig(ratios=(0.5, 0.3, 0.3), num_stages=3).ratios == (0.5, 0.3, 0.3)
    assert HieraVidConfig(ratios=[0, 0.3, 0.3, 0.57]).ratios == (0.0, 0.3, 0.3, 0.57)


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("segmentation", "kmeans", ("merge_ratio", "avgpool", "none")),
        ("overlap_indicator", "cos", ("tau", "topk")),
        ("relevance_sign", "minus", ("negative", "positive")),
        ("relevance_query", "first", ("last", "mean")),
        ("in_llm_selector", "topk", ("dpp", "bins")),
        ("greedy_backend", "numpy", ("auto", "torch", "numba", "triton")),
    ],
)
def test_config_bad_choice_lists_allowed(field, value, allowed):
    with pytest.raises(ValueError) as info:
        HieraVidConfig(**{field: value})
    message = str(info.value)
    assert field in message and repr(value) in message
    for name in allowed:
        assert name in message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tau", 1.5),
        ("tau", float("nan")),
        ("beta", -0.1),
        ("beta", 1.1),
        ("lam", 1.5),
        ("lam", float("nan")),
        ("delta", -0.1),
        ("delta", float("inf")),  # would zero every keep count (inf * 0 is NaN)
        ("eps", float("inf")),
        ("eps", 1.0),  # as large as the whole range of a min-max normalised score
        ("keep_clip", (0.5, 0.4)),
        ("keep_clip", (-0.1, 0.9)),
        ("avgpool_threshold", 2.0),
        ("num_stages", 0),
        ("query_tokens", 0),
        ("eps", 0.0),
        # wrong types: each named, never taken by truthiness or unpacked raw
        ("exact_total", "false"),
        ("exact_total", 1),
        ("keep_clip", 0.9),
        ("keep_clip", None),
        ("keep_clip", (0.05,)),
        ("keep_clip", (0.05, 0.5, 0.95)),
        ("keep_clip", ("a", "b")),
        ("eps", "abc"),
        ("eps", True),
        ("tau", True),
        ("query_tokens", True),
        ("num_stages", True),
        ("delta", True),
    ],
)
def test_config_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        HieraVidConfig(**{field: value})


def test_config_keep_clip_list_is_a_pair_of_floats():
    assert HieraVidConfig(keep_clip=[0, 1]).keep_clip == (0.0, 1.0)


def test_config_keeps_numpy_numbers_as_pythons():
    """A numpy scalar is accepted as the number it is, and stored as Python's: the config serialises to
    JSON, and a float32 0.3 still gets the paper's preset schedule (its round-off is 1.2e-8)."""
    import dataclasses
    import json

    import numpy as np

    from hieravid.methods.hieravid import HieraVid

    config = HieraVidConfig(budget=np.float32(0.3), num_stages=np.int64(4), tau=np.float64(0.5), lam=np.float32(1))
    assert type(config.budget) is float and type(config.num_stages) is int and type(config.lam) is float
    assert json.loads(json.dumps(dataclasses.asdict(config)))["num_stages"] == 4
    assert HieraVid(config).schedule(28).ratios == (0.5, 0.3, 0.3, 0.57)
    assert HieraVid(config).decision_layers(np.int64(28)) == [0, 7, 14, 21]
    arrays = HieraVidConfig(ratios=np.array([0.5, 0.3, 0.3, 0.57]), keep_clip=np.array([0.05, 0.95]),
                            exact_total=np.bool_(True))
    assert arrays == HieraVidConfig(ratios=(0.5, 0.3, 0.3, 0.57), keep_clip=(0.05, 0.95), exact_total=True)
    assert json.loads(json.dumps(dataclasses.asdict(arrays)))["ratios"] == [0.5, 0.3, 0.3, 0.57]


def test_keep_clip_that_cannot_reach_a_stage_ratio_is_named(recwarn):
    """A keep rate clipped at >= 0.9 removes at most 10% of a segment: a stage asking for 30% says so when
    the method is built for a model (it would keep more than the schedule says); exact_total trims to
    any ratio. The solver's own schedules reach such ratios too (S = 8 at B = 0.05): they run, warned."""
    from hieravid.methods.hieravid import HieraVid

    with pytest.warns(UserWarning, match=r"R_2=0.3.*keep_clip.*<= 0.7"):
        assert HieraVid(HieraVidConfig(budget=0.3, keep_clip=(0.9, 1.0))).decision_layers(28) == [0, 7, 14, 21]
    with pytest.warns(UserWarning, match=r"stage \d prunes R_\d=0.9\d+ of every segment"):
        assert len(HieraVid(HieraVidConfig(budget=0.05, num_stages=8)).decision_layers(32)) == 8
    recwarn.clear()
    assert HieraVid(HieraVidConfig(budget=0.3, keep_clip=(0.43, 1.0))).decision_layers(28) == [0, 7, 14, 21]  # R_4=0.57
    assert HieraVid(HieraVidConfig(budget=0.3, keep_clip=(0.9, 1.0), exact_total=True)).decision_layers(28)
    assert not [w for w in recwarn.list if "keep_clip" in str(w.message)]


def test_config_nan_delta_rejected():
    with pytest.raises(ValueError, match="delta"):
        HieraVidConfig(delta=float("nan"))


def test_config_non_number_beta_is_value_error():
    with pytest.raises(ValueError, match="beta"):
        HieraVidConfig(beta="0.5")


@pytest.mark.parametrize("num_frames, warns", [(1, True), (2, True), (4, False)])
def test_stage1_says_when_too_few_frames_cap_its_merge(num_frames, warns, recwarn):
    """At B = 0.1 stage 1 merges rho = 0.7 of the tokens: one or two frames cannot give that many."""
    from hieravid.methods import build
    from hieravid.methods.base import VideoTokens

    x, _ = planted_video(1, num_frames, [], 4)
    t, p, d = x.shape
    tokens = VideoTokens(features=x.reshape(-1, d), frame=torch.arange(t).repeat_interleave(p),
                         slot=torch.arange(p).repeat(t), num_frames=t, num_slots=p)
    build("hieravid", 0.1).decide(0, tokens, {"num_layers": 8})
    messages = [str(w.message) for w in recwarn.list if "stage 1 can merge" in str(w.message)]
    assert bool(messages) == warns
    if warns:
        assert f"with {num_frames} frame(s)" in messages[0] and "give the video more frames" in messages[0]


def test_schedule_keeps_to_what_eq5_can_remove():
    """With the default keep_clip a stage removes at least 5% of every segment, so an in-LLM stage asks
    for 0 or at least 0.05; exact_total hits any ratio, so its schedule is the unconstrained one."""
    from hieravid.methods.hieravid import HieraVid
    from hieravid.schedule import solve_schedule

    ratios = HieraVid(HieraVidConfig(budget=0.9)).schedule(24).ratios
    assert ratios[1] == 0.0 and min(ratios[2:]) >= 0.05
    assert HieraVid(HieraVidConfig(budget=0.9)).decision_layers(24) == [0, 12, 18]
    clip = HieraVid(HieraVidConfig(budget=0.9, keep_clip=(0.05, 0.99))).schedule(24).ratios
    assert all(r == 0.0 or r >= 0.01 for r in clip[1:]) and clip[1] > 0  # R_2 = 0.021 is allowed now
    exact = HieraVid(HieraVidConfig(budget=0.9, exact_total=True)).schedule(24)
    assert exact.ratios == solve_schedule(0.9, 24).ratios and exact.ratios[1] < 0.05


def test_bins_run_at_the_first_stage_that_prunes_in_a_model(monkeypatch):
    import hieravid
    from hieravid.methods import hieravid as module
    from tiny_models import build_inputs, build_model

    selectors = []
    real = module.decide_stage
    monkeypatch.setattr(module, "decide_stage", lambda *args: selectors.append(args[-1]) or real(*args))
    model = build_model("qwen2_vl")
    inputs = build_inputs("qwen2_vl", model)
    method = hieravid.methods.build("hieravid", 0.8, in_llm_selector="bins")
    ratios = method.schedule(model.config.text_config.num_hidden_layers).ratios
    assert ratios[1] == 0 and ratios[2] > 0 and ratios[3] > 0  # stage 2 skipped at this budget
    with torch.no_grad(), hieravid.apply(model, method):
        model(**inputs)
    assert selectors == ["bins", "dpp"]
