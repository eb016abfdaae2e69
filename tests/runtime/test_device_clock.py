"""Deciding is timed on the device's clock: on CUDA the clock waits for the queued layers first."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_inputs, build_model

import hieravid
from hieravid.runtime import engine
from hieravid.runtime.engine import device_clock

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_the_clock_waits_for_cuda_before_reading(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(("sync", device)))
    monkeypatch.setattr(engine.time, "perf_counter", lambda: events.append(("clock", None)) or 7.0)
    cuda = torch.device("cuda", 0)
    assert device_clock(cuda) == 7.0
    assert events == [("sync", cuda), ("clock", None)]
    events.clear()
    device_clock(torch.device("cpu"))
    assert events == [("clock", None)]  # nothing to wait for on the host


def test_each_decision_point_is_timed_on_the_device_clock(monkeypatch):
    model = build_model("qwen2_vl")
    inputs = build_inputs("qwen2_vl", model)
    calls = []
    monkeypatch.setattr(engine, "device_clock", lambda device: calls.append(device) or len(calls) * 0.5)
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3) as handle:
        model(**inputs)
    layers = sorted(handle.method.decision_layers(model.config.text_config.num_hidden_layers))
    points = len(layers)
    assert points >= 2
    assert calls == [torch.device("cpu")] * (2 * points)  # one reading before and one after each point
    assert handle.last_stats.decide_seconds == pytest.approx(0.5 * points)
    assert handle.last_stats.decide_seconds_by_layer == pytest.approx(dict.fromkeys(layers, 0.5))


def test_each_decision_point_keeps_its_own_time(monkeypatch):
    model = build_model("qwen2_vl")
    inputs = build_inputs("qwen2_vl", model)
    calls = []
    # The k-th point (1-based) reads (2k-1)^2 then (2k)^2: it takes 4k - 1 seconds.
    monkeypatch.setattr(engine, "device_clock", lambda device: calls.append(device) or float(len(calls) ** 2))
    with torch.no_grad(), hieravid.apply(model, "hieravid", 0.3) as handle:
        model(**inputs)
    layers = sorted(handle.method.decision_layers(model.config.text_config.num_hidden_layers))
    stats = handle.last_stats
    assert stats.decide_seconds_by_layer == {layer: 4.0 * k - 1 for k, layer in enumerate(layers, start=1)}
    assert stats.decide_seconds == sum(4.0 * k - 1 for k in range(1, len(layers) + 1))  # all points together
