"""Tests of the StreamingLLM baseline (attention sinks + recent window over the visual tokens)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import build_inputs, video_token_id

import hieravid
from hieravid.methods.base import VideoTokens
from hieravid.methods.budget import keep_count
from hieravid.methods.streamingllm import StreamingLLM, create_streamingllm, sink_window_mask

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def ref_mask(n: int, kept: int, sinks: int) -> list[bool]:
    head = min(sinks, kept)
    window = set(range(n - (kept - head), n))
    return [i < head or i in window for i in range(n)]


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 40), sinks=st.integers(0, 8), data=st.data())
def test_sink_window_mask_matches_reference(n, sinks, data):
    kept = data.draw(st.integers(0, n))
    mask = sink_window_mask(n, kept, sinks)
    assert mask.tolist() == ref_mask(n, kept, sinks)
    assert int(mask.sum()) == kept


def test_sink_window_examples():
    assert sink_window_mask(10, 6, 4).tolist() == [True] * 4 + [False] * 4 + [True] * 2
    assert sink_window_mask(10, 3, 4).tolist() == [True] * 3 + [False] * 7  # fewer than the sinks
    assert sink_window_mask(10, 3, 0).tolist() == [False] * 7 + [True] * 3  # a pure recent window
    with pytest.raises(ValueError, match="kept"):
        sink_window_mask(3, 4, 1)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 300), budget=st.floats(0.01, 1.0))
def test_kept_fraction_is_the_budget_at_every_layer(n, budget):
    method = StreamingLLM(budget)
    tokens = VideoTokens(
        features=torch.zeros(n, 2), frame=torch.zeros(n, dtype=torch.long), slot=torch.arange(n),
        num_frames=1, num_slots=n,
    )
    keep = method.decide(0, tokens, {"num_layers": 6}).keep
    assert int(keep.sum()) == keep_count(budget, n)
    assert method.expected_tokens_per_layer(n, 6) == [keep_count(budget, n)] * 6
    assert abs(int(keep.sum()) / n - budget) <= 1 / n + 1e-12


def test_decision_layers_and_options():
    assert StreamingLLM(0.3).decision_layers(28) == [0]
    assert StreamingLLM(1.0).decision_layers(28) == []
    method = create_streamingllm(0.3, sinks=2)
    assert method.sinks == 2 and method.name == "streamingllm"
    assert create_streamingllm(0.3).sinks == 4  # the paper's
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="sinks"):
            StreamingLLM(0.3, sinks=bad)
    with pytest.raises(ValueError, match="unknown option"):
        create_streamingllm(0.3, window=10)


# ------------------------------------------------------------------------------------------ on a model


def test_keeps_the_first_visual_tokens_and_the_latest_ones(family, model):
    inputs = build_inputs(family, model)
    with torch.no_grad(), hieravid.apply(model, StreamingLLM(0.3)) as handle:
        model(**inputs)
    stats = handle.last_stats
    visual = torch.nonzero(inputs["input_ids"][0] == video_token_id(family, model)).squeeze(1)
    if family == "llava_onevision":
        visual = visual[:-1]  # its trailing newline is text
    n = visual.numel()
    kept_count = keep_count(0.3, n)
    expected = torch.cat([visual[:4], visual[n - (kept_count - 4):]])
    for kept in stats.kept_positions:  # every layer: pruned once, before layer 0
        assert torch.equal(kept[0][torch.isin(kept[0], visual)], expected)
    assert stats.per_sample_tokens_per_layer[0] == [kept_count] * 8
