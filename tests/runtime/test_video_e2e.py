"""End to end: a real video file -> read_video -> the family's own processor -> hieravid.apply -> generate.

Tiny random-weight models of the real architectures (tests/tiny_models.py); greedy decoding throughout.
"""

from __future__ import annotations

import pytest
import torch

import hieravid
import tiny_models as tm
from hieravid.video import SampledVideo, read_video, video_metadata, write_test_video

FPS = 8
NEW_TOKENS = 4


@pytest.fixture(scope="module")
def video_files(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """Per family, two random-pixel videos at the family's frame size: 24 frames (3 s) and 100 frames (12.5 s)."""
    folder = tmp_path_factory.mktemp("e2e_videos")
    files = {}
    for family in tm.FAMILIES:
        height, width = tm.DEFAULT_FRAME_HW[family]
        short, long = folder / f"{family}_short.mp4", folder / f"{family}_long.mp4"
        write_test_video(short, tm.random_video(24, height, width, seed=1), fps=FPS)
        write_test_video(long, tm.random_video(100, height, width, seed=2), fps=FPS)
        files[family] = (str(short), str(long))
    return files


def processor_batch(processor, videos: list[SampledVideo], questions: list[str]) -> dict:
    """What a user writes: chat prompts, the sampled frames and their metadata through the processor."""
    return processor(
        text=[tm.video_prompt(processor, q) for q in questions],
        videos=[v.frames for v in videos],
        video_metadata=[video_metadata(v) for v in videos],
        return_tensors="pt",
        padding=True,
    )


def greedy(model, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)


def check_pruned_generation(family: str, model, inputs: dict) -> None:
    """Prune with HieraVid at budget 0.3, then check vanilla after ``remove()`` equals the unpatched model."""
    reference = greedy(model, inputs)  # the unpatched model
    video_tokens = (inputs["input_ids"] == tm.video_token_id(family, model)).sum(1).tolist()  # per sample

    handle = hieravid.apply(model, "hieravid", 0.3)
    out = greedy(model, inputs)
    stats = handle.last_stats
    handle.remove()

    assert out.shape == (inputs["input_ids"].shape[0], inputs["input_ids"].shape[1] + NEW_TOKENS)
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert stats is not None and stats.pruned
    assert stats.tokens_per_layer[0] < sum(video_tokens)
    for rows, n in zip(stats.per_sample_tokens_per_layer, video_tokens):
        assert 0 < rows[-1] <= rows[0] < n

    with hieravid.apply(model, "vanilla") as vanilla:
        assert torch.equal(greedy(model, inputs), reference)
        assert vanilla.last_stats is not None
    assert torch.equal(greedy(model, inputs), reference)  # removed: the model is back as it was


@pytest.mark.parametrize("family", tm.FAMILIES)
def test_one_video(family, video_files, tmp_path):
    model = tm.build_model(family)
    processor = tm.build_processor(family, model, tmp_path)
    sampled = read_video(video_files[family][0], 8)
    assert sampled.frames.shape == (8, *tm.DEFAULT_FRAME_HW[family], 3)
    inputs = processor_batch(processor, [sampled], ["what is happening in the video ?"])
    layout = tm.video_layout(family, model, inputs)  # the processor built the layout the adapters expect
    assert layout.video_tokens_per_sample == int((inputs["input_ids"] == layout.video_token_id).sum())
    check_pruned_generation(family, model, inputs)


@pytest.mark.parametrize("family", tm.FAMILIES)
def test_batch_of_two_videos(family, video_files, tmp_path):
    # Different files, a window, different frame counts (Qwen: 8 and 4 frames -> different token counts,
    # Qwen3-VL timestamps of two and three digits) -> a left-padded batch.
    model = tm.build_model(family)
    processor = tm.build_processor(family, model, tmp_path)
    short, long = video_files[family]
    second_frames = 8 if family == "llava_onevision" else 4  # the LLaVA-OV processor stacks videos: equal counts
    videos = [read_video(short, 8), read_video(long, second_frames, start_s=8.0)]
    assert videos[1].timestamps_s[0] >= 8.0
    inputs = processor_batch(processor, videos, ["what is happening in the video ?", "why ?"])
    check_pruned_generation(family, model, inputs)
