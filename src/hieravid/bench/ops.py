"""Micro-benchmark of HieraVid's decision alone (no model): the four-stage decision on video features
of a real model's shape, timed stage by stage.

The features are synthetic but structured like a real video: ``scenes`` scenes separated by hard cuts,
each scene a fixed pattern per token slot that drifts slowly from frame to frame, so segmentation finds
the scenes and stage 1 has runs to merge. In-LLM hidden states are the merged tokens; keys and the query
row are random and made outside the timer. In a model the relevance row's query and keys come from the
decision layer's own input norm and key projection over the whole sequence, which the runtime runs inside
the decision (``hieravid bench`` times it): this benchmark times the selection itself, not that
projection.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from hieravid.bench.models import bench_device, machine_description
from hieravid.config import HieraVidConfig
from hieravid.methods import decide_stage, decide_stage1, selector_for_stage
from hieravid.methods.hieravid import HieraVid
from hieravid.ops import relevance
from hieravid.ops.dpp import resolve_greedy_backend
from hieravid.runtime import device_clock
from hieravid.schedule import solve_schedule

__all__ = ["OpsBenchResult", "synthetic_video", "run_ops_bench", "machine_description"]


def synthetic_video(
    frames: int,
    slots: int,
    dim: int,
    scenes: int,
    *,
    drift: float = 0.3,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """A ``(frames, slots, dim)`` feature video with ``scenes`` equal-length scenes and hard cuts.

    Inside a scene, frame t is the scene's pattern plus a slowly varying random walk (step ``drift``
    relative to the pattern's per-channel scale); a new scene starts from a fresh random pattern.
    """
    if not 1 <= scenes <= frames:
        raise ValueError(f"scenes must be in [1, frames={frames}], got {scenes}")
    gen = torch.Generator().manual_seed(seed)
    scene_of_frame = (torch.arange(frames) * scenes) // frames  # (T,)
    patterns = torch.randn(scenes, slots, dim, generator=gen)  # (M, P, D)
    steps = drift * torch.randn(frames, slots, dim, generator=gen) / 4  # (T, P, D)
    x = torch.empty(frames, slots, dim)
    walk = torch.zeros(slots, dim)
    for t in range(frames):  # benchmark set-up only, not timed
        if t == 0 or scene_of_frame[t] != scene_of_frame[t - 1]:
            walk.zero_()
        walk += steps[t]
        x[t] = patterns[scene_of_frame[t]] + walk
    return x.to(device=device, dtype=dtype)


@dataclass
class OpsBenchResult:
    """Median decision times (milliseconds) of one ops benchmark run, with its shape and machine."""

    machine: str
    device: str
    frames: int
    slots: int
    dim: int
    scenes: int
    budget: float
    ratios: list[float]
    segments_found: int
    tokens_per_stage: list[int]
    stage_ms: list[float]
    total_ms: float
    repeats: int
    runs_total_ms: list[float] = field(default_factory=list)
    greedy_backend: str = "numba"  # the greedy MAP loop that ran

    def to_dict(self) -> dict:
        return asdict(self)


def run_ops_bench(
    *,
    frames: int = 64,
    slots: int = 169,
    dim: int = 3584,
    budget: float = 0.3,
    scenes: int = 8,
    num_layers: int = 28,
    heads: int = 28,
    kv_heads: int = 4,
    head_dim: int = 128,
    text_tokens: int = 128,
    repeats: int = 5,
    warmup: int = 1,
    device: str = "cpu",
    config: HieraVidConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> OpsBenchResult:
    """Time the full four-stage HieraVid decision on one video of the given shape.

    Stage 1 = Eq. 1-4 + Eq. 3 merge; each later stage = Eq. 8 relevance from one query row + Eq. 5
    counts + Eq. 9-10 DPP. Times are medians over ``repeats`` runs after ``warmup`` runs, in ms.
    ``progress``, when given, is called with a line after each timed run.
    """
    dev = bench_device(device)
    config = config or HieraVidConfig(budget=budget)
    schedule = solve_schedule(budget, num_layers, config.num_stages, min_stage_ratio=config.min_stage_ratio)
    x = synthetic_video(frames, slots, dim, scenes, device=dev)
    gen = torch.Generator(device="cpu").manual_seed(1)
    query = torch.randn(1, heads, head_dim, generator=gen).to(dev)  # (1, H, d_h) last prompt token

    # The decision points the method itself runs on this schedule (none at budget 1, no stage of ratio 0).
    decided = set(HieraVid(dataclasses.replace(config, ratios=tuple(schedule.ratios))).decision_layers(num_layers))

    def one_run() -> tuple[list[float], list[int], int]:
        if not decided:
            return [0.0] * len(schedule.ratios), [frames * slots] * len(schedule.ratios), 0
        times: list[float] = []
        start = device_clock(dev)
        first = decide_stage1(x, schedule.ratios[0], config)
        times.append(device_clock(dev) - start)
        hidden, segment = first.features, first.token_segment[first.keep]  # (N, D), (N,)
        counts = [hidden.shape[0]]
        for stage, (layer, ratio) in enumerate(zip(schedule.boundaries[1:], schedule.ratios[1:]), start=2):
            num_visual = hidden.shape[0]
            if layer not in decided or num_visual == 0:  # the runtime skips a video with no token left too
                times.append(0.0)
                counts.append(num_visual)
                continue
            # Keys of the visual tokens followed by the text tokens (the query is the last of these).
            keys = torch.randn(num_visual + text_tokens, kv_heads, head_dim, generator=gen).to(dev)
            visual_index = torch.arange(num_visual, device=dev)
            start = device_clock(dev)
            r = relevance(query, keys, visual_index, sign=config.relevance_sign, eps=config.eps)
            keep = decide_stage(
                hidden, r, segment, first.z, ratio, config, selector_for_stage(stage, config, schedule.ratios)
            )
            hidden, segment = hidden[keep], segment[keep]
            times.append(device_clock(dev) - start)
            counts.append(hidden.shape[0])
        return times, counts, first.num_segments

    for _ in range(warmup):
        one_run()
    runs = []
    for i in range(repeats):
        runs.append(one_run())
        if progress is not None:
            progress(f"  run {i + 1}/{repeats}: {1000 * sum(runs[-1][0]):.1f} ms")
    stage_ms = [1000 * statistics.median(r[0][s] for r in runs) for s in range(len(runs[0][0]))]
    totals = [1000 * sum(r[0]) for r in runs]
    return OpsBenchResult(
        machine=machine_description(dev),
        device=str(dev),
        frames=frames,
        slots=slots,
        dim=dim,
        scenes=scenes,
        budget=budget,
        ratios=list(schedule.ratios),
        segments_found=runs[0][2],
        tokens_per_stage=runs[0][1],
        stage_ms=stage_ms,
        total_ms=statistics.median(totals),
        repeats=repeats,
        runs_total_ms=totals,
        greedy_backend=resolve_greedy_backend(config.greedy_backend, dev),
    )
