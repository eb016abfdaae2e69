"""Synthetic video features with planted scene cuts, shared by the tests."""

import torch


def planted_video(seed: int, num_frames: int, cuts: list[int], num_slots: int, dim: int = 32, noise: float = 0.01):
    """Scenes start at frame 0 and at every frame in ``cuts``; each frame = scene base + small noise."""
    gen = torch.Generator().manual_seed(seed)
    starts = [0] + sorted(cuts)
    frames = []
    for s, start in enumerate(starts):
        end = starts[s + 1] if s + 1 < len(starts) else num_frames
        base = torch.randn(num_slots, dim, generator=gen)
        for _ in range(start, end):
            frames.append(base + noise * torch.randn(num_slots, dim, generator=gen))
    expected = []
    for t in range(num_frames):
        expected.append(sum(1 for c in cuts if c <= t))
    return torch.stack(frames), expected
