"""The opt-in decision trace (``hieravid.apply(..., trace=True)`` -> ``handle.last_trace``)."""

from __future__ import annotations

import pytest
import torch

import hieravid
import tiny_models as tm


pytestmark = pytest.mark.usefixtures("one_thread")


def run(model, inputs: dict, method: str, budget: float | None = None, trace: bool = True):
    with hieravid.apply(model, method, budget, trace=trace) as handle, torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        return out, handle.last_stats, handle.last_trace


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen3_vl", "llava_onevision"])
def traced(request):
    """A padded batch of two through HieraVid at 0.3 with the trace on."""
    family = request.param
    model = tm.build_model(family)
    inputs = tm.build_inputs(family, model, batch=2, prompt_tokens=[8, 5], seed=3)
    out, stats, trace = run(model, inputs, "hieravid")
    return family, model, inputs, out, stats, trace


def test_trace_matches_stats(traced) -> None:
    family, model, inputs, _, stats, trace = traced
    assert trace.method == "hieravid" and trace.num_layers == len(stats.tokens_per_layer)
    assert len(trace.samples) == 2
    for b, sample in enumerate(trace.samples):
        assert sample.num_tokens == stats.visual_tokens[b] == tm.num_visual_tokens(family, model, inputs, b)
        assert sample.tokens_per_layer == stats.per_sample_tokens_per_layer[b]
        for layer in range(trace.num_layers):
            present = sample.present_at_layer(layer)
            assert int(present.sum()) == stats.per_sample_tokens_per_layer[b][layer]
            # the trace's tokens are the positions the runtime kept
            visual_kept = set(sample.positions[present].tolist())
            assert visual_kept <= set(stats.kept_positions[layer][b].tolist())
        assert [s.layer for s in sample.stages] == [0, 2, 4, 6]  # 8 layers, 4 stages


def test_stage1_merges_into_kept_anchors(traced) -> None:
    _, _, _, _, stats, trace = traced
    for sample in trace.samples:
        first = sample.stages[0]
        assert first.num_present == sample.num_tokens
        kept = set(first.kept_tokens.tolist())
        merged = first.merged_tokens
        assert merged.numel() > 0 and first.dropped_tokens.numel() == 0  # stage 1 only merges
        assert not kept & set(merged.tolist())  # merged tokens are gone from the stage-1 kept set
        targets = first.merged_into[first.merged_into >= 0]
        assert set(targets.tolist()) <= kept
        # a merged token joins the same slot of an earlier frame
        P = sample.num_slots
        assert torch.equal(targets % P, merged % P) and bool((targets // P < merged // P).all())
        assert first.scores is None  # no attention before layer 0


def test_later_stages_select_among_the_survivors(traced) -> None:
    _, _, _, _, _, trace = traced
    for sample in trace.samples:
        for before, stage in zip(sample.stages, sample.stages[1:]):
            assert torch.equal(stage.tokens, before.kept_tokens)
            assert stage.merged_tokens.numel() == 0
            assert stage.scores is not None and stage.scores.shape == stage.tokens.shape
            assert float(stage.scores.min()) >= 0 and float(stage.scores.max()) <= 1.01  # Norm of Eq. 8
            assert stage.segment is not None and stage.segment.shape == stage.tokens.shape


def test_segments(traced) -> None:
    _, _, _, _, stats, trace = traced
    for b, sample in enumerate(trace.samples):
        seg = sample.frame_segment
        assert seg is not None and seg.shape == (sample.num_frames,)
        assert sample.segment_starts[0] == 0
        assert len(sample.segment_starts) == stats.per_sample_segments[b] == int(seg.max()) + 1
        frames_of_tokens = torch.arange(sample.num_tokens) // sample.num_slots
        assert torch.equal(sample.stages[0].segment, seg[frames_of_tokens])


def test_trace_changes_nothing_and_is_off_by_default(traced) -> None:
    _, model, inputs, out, stats, _ = traced
    plain_out, plain_stats, plain_trace = run(model, inputs, "hieravid", trace=False)
    assert plain_trace is None
    assert torch.equal(plain_out, out)
    assert plain_stats.per_sample_tokens_per_layer == stats.per_sample_tokens_per_layer


@pytest.mark.parametrize("method", ["vanilla", "fastv", "framefusion"])
def test_other_methods_give_kept_tokens_per_layer(method: str) -> None:
    model = tm.build_model("qwen2_vl")
    inputs = tm.build_inputs("qwen2_vl", model)
    _, stats, trace = run(model, inputs, method)
    sample = trace.samples[0]
    assert sample.frame_segment is None and sample.segment_starts == []
    if method == "vanilla":
        assert sample.stages == []
    for layer in range(trace.num_layers):
        assert int(sample.present_at_layer(layer).sum()) == stats.tokens_per_layer[layer]


def test_text_only_call_traces_no_sample() -> None:
    model = tm.build_model("qwen2_vl")
    ids = torch.tensor([[2, 20, 21, 22, 23]])
    with hieravid.apply(model, "hieravid", 0.3, trace=True) as handle, torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
        assert handle.last_trace is not None and handle.last_trace.samples == [None]


def test_an_unpruned_video_call_traces_its_video() -> None:
    """A video after a cached prefix is not pruned: its trace is the video with no decision, as vanilla's."""
    from transformers import DynamicCache

    model = tm.build_model("qwen2_vl")
    inputs = tm.build_inputs("qwen2_vl", model)
    with hieravid.apply(model, "hieravid", 0.3, trace=True) as handle, torch.no_grad():
        cache = DynamicCache()
        model(input_ids=inputs["input_ids"][:, :3], attention_mask=inputs["attention_mask"][:, :3], past_key_values=cache)
        with pytest.warns(UserWarning, match="not pruned"):
            model.generate(**inputs, past_key_values=cache, max_new_tokens=2, do_sample=False)
    sample = handle.last_trace.samples[0]
    assert sample is not None and sample.stages == []
    assert sample.num_tokens == handle.last_stats.visual_tokens[0] > 0
    assert sample.tokens_per_layer == handle.last_stats.tokens_per_layer


def test_stats_and_trace_always_describe_one_call_across_threads(monkeypatch):
    """Another thread's prefill that ends while this one builds its trace leaves the pair of one call."""
    import threading

    import hieravid.runtime.engine as engine

    model = tm.build_model("qwen2_vl")
    one = tm.build_inputs("qwen2_vl", model, seed=1)  # batch 1
    two = tm.build_inputs("qwen2_vl", model, batch=2, frames=4, seed=2)  # batch 2
    build, in_window, other_done = engine._build_trace, threading.Event(), threading.Event()

    def slow_build(*args):
        if threading.current_thread().name == "first":
            in_window.set()
            other_done.wait(60)
        return build(*args)

    monkeypatch.setattr(engine, "_build_trace", slow_build)
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3, trace=True) as handle:
        first = threading.Thread(target=lambda: model(**one), name="first")
        first.start()
        in_window.wait(60)
        model(**two)
        other_done.set()
        first.join()
        assert len(handle.last_stats.visual_tokens) == len(handle.last_trace.samples)
