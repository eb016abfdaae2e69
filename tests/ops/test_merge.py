"""Tests of hieravid.ops.merge.temporal_run_merge (spec Eq. 3) against a slow per-slot walk."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hieravid.ops.merge import temporal_run_merge


def ref_run_merge(x: torch.Tensor, mask: list[list[bool]]):
    """For each slot, walk the frames: an unmasked frame opens a run (its anchor), masked frames join the
    current run. Return keep, anchor frame, run length and the kept features (float64, sequence order)."""
    data = x.double().tolist()  # [T][P][D]
    num_frames, num_slots = len(data), len(data[0])
    keep = [[not mask[t][p] for p in range(num_slots)] for t in range(num_frames)]
    anchor = [[-1] * num_slots for _ in range(num_frames)]
    length = [[0] * num_slots for _ in range(num_frames)]
    merged: dict[tuple[int, int], list[float]] = {}
    for p in range(num_slots):
        current = None
        members: list[int] = []
        runs = []
        for t in range(num_frames):
            if not mask[t][p]:
                if current is not None:
                    runs.append((current, members))
                current, members = t, [t]
            else:
                members.append(t)
        runs.append((current, members))
        for a, frames in runs:
            for t in frames:
                anchor[t][p] = a
            length[a][p] = len(frames)
            dim = len(data[a][p])
            merged[(a, p)] = [sum(data[t][p][c] for t in frames) / len(frames) for c in range(dim)]
    features = [merged[(t, p)] for t in range(num_frames) for p in range(num_slots) if keep[t][p]]
    return keep, anchor, length, features


@st.composite
def videos_and_masks(draw):
    num_frames = draw(st.integers(1, 6))
    num_slots = draw(st.integers(1, 5))
    dim = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    mask = [[False] * num_slots] + [
        draw(st.lists(st.booleans(), min_size=num_slots, max_size=num_slots)) for _ in range(num_frames - 1)
    ]
    x = torch.randn(num_frames, num_slots, dim, generator=torch.Generator().manual_seed(seed))
    return x, mask


@settings(max_examples=80, deadline=None)
@given(case=videos_and_masks())
def test_run_merge_matches_slow_reference(case):
    x, mask = case
    out = temporal_run_merge(x, torch.tensor(mask, dtype=torch.bool).view(x.shape[0], x.shape[1]))
    keep, anchor, length, features = ref_run_merge(x, mask)
    assert out.keep.tolist() == keep
    assert out.anchor_frame.tolist() == anchor
    assert out.run_length.tolist() == length
    assert out.features.dtype == x.dtype
    assert out.features.shape == (len(features), x.shape[2])
    want = torch.tensor(features, dtype=torch.float64).view(len(features), x.shape[2])
    torch.testing.assert_close(out.features.double(), want, rtol=1e-6, atol=1e-6)
    num_masked = sum(sum(row) for row in mask)
    assert out.num_removed == num_masked
    assert out.features.shape[0] == x.shape[0] * x.shape[1] - num_masked


def test_run_merge_worked_example_sequence_order():
    # T = 4, P = 2, D = 1; slot 0: frames 1, 2 merge into 0; slot 1: frame 3 merges into 2.
    x = torch.tensor([[[1.0], [10.0]], [[2.0], [20.0]], [[6.0], [30.0]], [[7.0], [50.0]]])
    mask = torch.tensor([[False, False], [True, False], [True, False], [False, True]])
    out = temporal_run_merge(x, mask)
    # Kept tokens in frame-major order: (0,0) (0,1) (1,1) (2,1) (3,0).
    assert out.features.squeeze(1).tolist() == [3.0, 10.0, 20.0, 40.0, 7.0]
    assert out.run_length.tolist() == [[3, 1], [0, 1], [0, 2], [1, 0]]
    assert out.anchor_frame.tolist() == [[0, 0], [0, 1], [0, 2], [3, 2]]
    assert out.num_removed == 3


@settings(max_examples=20, deadline=None)
@given(case=videos_and_masks())
def test_run_merge_bf16_close_to_float64_reference(case):
    x, mask = case
    xb = x.to(torch.bfloat16)
    out = temporal_run_merge(xb, torch.tensor(mask).view(x.shape[0], x.shape[1]))
    assert out.features.dtype == torch.bfloat16
    _, _, _, features = ref_run_merge(xb, mask)  # reference on the bf16 values, in float64
    want = torch.tensor(features, dtype=torch.float64).view(-1, x.shape[2])
    torch.testing.assert_close(out.features.double(), want, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_identical_frames_merge_into_the_original(dtype):
    frame = torch.randn(1, 4, 8).to(dtype)
    x = frame.expand(5, 4, 8).clone()
    mask = torch.ones(5, 4, dtype=torch.bool)
    mask[0] = False
    out = temporal_run_merge(x, mask)
    assert out.features.shape == (4, 8)
    assert out.run_length[0].tolist() == [5, 5, 5, 5]
    if dtype == torch.bfloat16:
        assert torch.equal(out.features, frame[0])
    else:
        torch.testing.assert_close(out.features, frame[0], rtol=1e-6, atol=0)


def test_empty_mask_is_identity():
    x = torch.randn(3, 4, 5)
    out = temporal_run_merge(x, torch.zeros(3, 4, dtype=torch.bool))
    assert torch.equal(out.features, x.reshape(12, 5))
    assert out.num_removed == 0
    assert out.keep.all() and (out.run_length == 1).all()


def test_merge_does_not_modify_input():
    x = torch.randn(3, 2, 4)
    before = x.clone()
    mask = torch.tensor([[False, False], [True, True], [True, False]])
    temporal_run_merge(x, mask)
    assert torch.equal(x, before)


def test_frame0_in_mask_raises():
    mask = torch.zeros(3, 2, dtype=torch.bool)
    mask[0, 1] = True
    with pytest.raises(ValueError, match="frame 0"):
        temporal_run_merge(torch.randn(3, 2, 4), mask)


def test_mask_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        temporal_run_merge(torch.randn(3, 2, 4), torch.zeros(2, 3, dtype=torch.bool))
