"""The picture of a pruned prefill (``hieravid.viz``)."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny_models as tm
from hieravid.infer import answer, load_model
from hieravid.runtime import PruneTrace
from hieravid.synthetic import generate_sample
from hieravid.viz import render_decisions, token_grid


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def proxy(proxy_dir):
    return load_model(proxy_dir)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return generate_sample(2).frames  # (32, 96, 96, 3)


def traced(loaded, frames: np.ndarray, method: str, budget: float = 0.3):
    result = answer(loaded, frames, "what color is the brief flash ?", method=method, budget=budget,
                    max_new_tokens=1, trace=True)
    assert result.trace is not None
    return result


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels from the PNG header."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_hieravid_picture(proxy, frames: np.ndarray, tmp_path: Path) -> None:
    result = traced(proxy, frames, "hieravid")
    path = tmp_path / "hieravid.png"
    picture = render_decisions(path, frames, result.trace, budget=0.3, title="HieraVid at 0.3",
                               notes=["question: what color is the brief flash ?"],
                               flops_ratio=result.stats.flops_ratio)
    assert picture.frames_shown == 16 and picture.grid_hw == (6, 6)  # 32 frames = 16 groups of 6 x 6 tokens
    titles = picture.panels
    assert len(titles) == 7
    assert titles[0].startswith("Sampled frames (32 input frames, 16 model frames)")
    assert titles[1].startswith("Stage 1, before layer 0") and "576 → 288 tokens" in titles[1] and "merged" in titles[1]
    for k, layer in zip((2, 3, 4), (2, 4, 6)):
        assert titles[k].startswith(f"Stage {k}, at layer {layer}:") and "dropped" in titles[k]
    assert titles[5].startswith("Token relevance r (Eq. 8) at layer 2")
    assert titles[6].startswith("Visual tokens per layer") and "FLOPs" in titles[6]
    assert path.stat().st_size > 10_000
    assert png_size(path) == (picture.width_px, picture.height_px)


def test_segment_boundaries_are_named(proxy, frames: np.ndarray, tmp_path: Path) -> None:
    trace = traced(proxy, frames, "hieravid").trace
    sample = trace.samples[0]
    three = torch.tensor([0] * 5 + [1] * 4 + [2] * 7)
    trace = dataclasses.replace(trace, samples=[dataclasses.replace(sample, frame_segment=three)])
    picture = render_decisions(tmp_path / "segments.png", frames, trace, budget=0.3)
    assert "3 segments" in picture.panels[0]


@pytest.mark.parametrize("method, rows", [("vanilla", 2), ("fastv", 3), ("pyramiddrop", 5)])
def test_any_method(proxy, frames: np.ndarray, tmp_path: Path, method: str, rows: int) -> None:
    result = traced(proxy, frames, method, budget=1.0 if method == "vanilla" else 0.3)
    picture = render_decisions(tmp_path / f"{method}.png", frames, result.trace)
    assert len(picture.panels) == rows  # frames, one row per decision that removed tokens, tokens per layer
    assert picture.panels[-1].startswith("Visual tokens per layer")
    assert (tmp_path / f"{method}.png").stat().st_size > 0


def test_token_grid() -> None:
    assert token_grid(24, (112, 168)) == (4, 6)
    assert token_grid(25, (126, 126)) == (5, 5)
    assert token_grid(36, (96, 96)) == (6, 6)
    assert token_grid(99, (240, 320)) == (9, 11)
    assert token_grid(169, (384, 384)) == (13, 13)
    with pytest.raises(ValueError, match="at least one token"):
        token_grid(0, (10, 10))
    for frame_hw in [(0, 10), (10, 0), (-4, 4)]:
        with pytest.raises(ValueError, match=r"frame_hw is a frame's \(height, width\), both above 0"):
            token_grid(4, frame_hw)


def test_bad_input(proxy, frames: np.ndarray, tmp_path: Path) -> None:
    trace = traced(proxy, frames, "fastv").trace
    with pytest.raises(ValueError, match="frames must be"):
        render_decisions(tmp_path / "x.png", frames[0], trace)
    with pytest.raises(ValueError, match="grid_hw"):
        render_decisions(tmp_path / "x.png", frames, trace, grid_hw=(5, 7))
    with pytest.raises(ValueError, match="no video"):
        render_decisions(tmp_path / "x.png", frames, PruneTrace("fastv", 8, [None]))
    with pytest.raises(ValueError, match="uint8 pixels"):
        render_decisions(tmp_path / "x.png", frames / 255.0, trace)
    with pytest.raises(ValueError, match="8 frames for the 16 frames the model saw"):
        render_decisions(tmp_path / "x.png", frames[:8], trace)
    with pytest.raises(ValueError, match=r"one label per frame \(32\), got 3"):
        render_decisions(tmp_path / "x.png", frames, trace, frame_labels=["0", "1", "2"])


@pytest.mark.parametrize("suffix, magic", [(".svg", b"<?xml"), (".pdf", b"%PDF"), (".jpg", b"\xff\xd8\xff"),
                                           (".jpeg", b"\xff\xd8\xff")])
def test_the_picture_has_the_format_its_name_says(proxy, frames, tmp_path, suffix, magic) -> None:
    from hieravid.cli import _PICTURES, _check_output

    trace = traced(proxy, frames, "fastv").trace
    path = tmp_path / f"x{suffix}"
    _check_output(str(path), "--viz", _PICTURES)  # the command takes what the library writes
    picture = render_decisions(path, frames, trace)
    assert path.read_bytes().startswith(magic) and picture.width_px > 0


def test_a_name_whose_suffix_is_no_picture_format_is_refused_before_drawing(proxy, frames, tmp_path, monkeypatch) -> None:
    from matplotlib.figure import Figure

    trace = traced(proxy, frames, "fastv").trace
    drawn = []
    monkeypatch.setattr(Figure, "add_axes", lambda *a, **k: drawn.append(1) or pytest.fail("drew before refusing"))
    with pytest.raises(ValueError, match=r"matplotlib cannot write a '\.3' picture .*end the name with \.png"):
        render_decisions(tmp_path / "decisions_0.3", frames, trace)
    assert not drawn and not list(tmp_path.iterdir())


def test_skipped_stages_keep_their_numbers(proxy, frames, tmp_path) -> None:
    """At budget 0.9 HieraVid skips stage 2 (ratio 0): the rows say stages 3 and 4, at their layers."""
    picture = render_decisions(tmp_path / "b09.png", frames, traced(proxy, frames, "hieravid", budget=0.9).trace)
    stages = [t.split(",")[0] for t in picture.panels if t.startswith("Stage")]
    assert stages == ["Stage 1", "Stage 3", "Stage 4"]


def test_the_topk_ablation_shows_its_attention_normalised(proxy, frames, tmp_path) -> None:
    trace = traced(proxy, frames, "hieravid_topk").trace
    scores = next(s.scores for s in trace.samples[0].stages if s.scores is not None)
    assert float(scores.min()) < 0.01 and 0.99 < float(scores.max()) <= 1.001  # the colour scale's [0, 1]
    picture = render_decisions(tmp_path / "topk.png", frames, trace)
    assert any(t.startswith("Token attention a (min-max normalised)") for t in picture.panels)


def test_other_family_grid(tmp_path: Path) -> None:
    model = tm.build_model("llava_onevision")
    tm.build_processor("llava_onevision", model, tmp_path)
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    video = tm.random_video(8, 126, 126)
    result = answer(loaded, video, "what is happening ?", method="hieravid", budget=0.3, max_new_tokens=1, trace=True)
    picture = render_decisions(tmp_path / "llava.png", video, result.trace, budget=0.3)
    assert picture.grid_hw == (5, 5) and picture.frames_shown == 8


def test_decisions_left_out_of_the_rows_are_said(proxy, frames: np.ndarray) -> None:
    from hieravid.viz import _MAX_STAGE_ROWS, _how_to_read, _stages_to_draw

    sample = traced(proxy, frames, "pyramiddrop").trace.samples[0]  # 3 decisions that remove tokens
    assert "not drawn" not in _how_to_read("pyramiddrop", sample)
    doubled = dataclasses.replace(sample, stages=sample.stages * 2)  # 6: more than the rows drawn
    assert len(_stages_to_draw(doubled)) == _MAX_STAGE_ROWS == 4
    assert "- 2 smaller decision(s) are not drawn as rows" in _how_to_read("pyramiddrop", doubled)


def test_odd_frame_counts_show_the_frames_each_model_frame_holds(proxy, tmp_path: Path) -> None:
    """Qwen-VL processors complete an odd count by repeating the last frame: 5 input frames are the model
    frames (0, 1), (2, 3), (4, 4), and each column shows and names the first frame of its own group."""
    video = np.zeros((5, 96, 96, 3), np.uint8)
    video[..., 0] = 50 * np.arange(5)[:, None, None]
    result = answer(proxy, video, "what color ?", method="hieravid", budget=0.3, max_new_tokens=1, trace=True)
    picture = render_decisions(tmp_path / "odd.png", video, result.trace, budget=0.3)
    assert picture.columns == [(0, 1), (2, 3), (4, 4)]
    assert picture.panels[0].startswith("Sampled frames (5 input frames, 3 model frames)")


def test_a_llava_frame_grid_is_square_whatever_the_video_shape(tmp_path: Path) -> None:
    """LLaVA-OneVision resizes every frame to a square, so a wide video still has a square token grid."""
    model = tm.build_model("llava_onevision")
    tm.build_processor("llava_onevision", model, tmp_path)
    model.save_pretrained(tmp_path)
    video = tm.random_video(4, 24, 160)
    result = answer(load_model(tmp_path), video, "what is happening ?", method="fastv", budget=0.3,
                    max_new_tokens=1, trace=True)
    assert result.trace.samples[0].grid_hw == (5, 5)
    assert render_decisions(tmp_path / "wide.png", video, result.trace).grid_hw == (5, 5)


def test_frame_cells_take_the_token_grids_shape_within_bounds(proxy, frames: np.ndarray, tmp_path) -> None:
    """A cell shows the frame as the model saw it, on its token grid: the cell has the grid's aspect ratio,
    within 1:4 and 4:1. A 40:1 video on a square grid (LLaVA resizes frames to squares) draws as a square
    one, not a picture tens of thousands of pixels tall; a 36 x 1 grid does not either."""
    result = traced(proxy, frames, "hieravid")
    square = render_decisions(tmp_path / "square.png", frames, result.trace)
    for name, video in (("tall", np.repeat(frames, 40, axis=1)), ("wide", np.repeat(frames, 40, axis=2))):
        picture = render_decisions(tmp_path / f"{name}.png", video, result.trace)
        assert (picture.width_px, picture.height_px) == (square.width_px, square.height_px)
    column = render_decisions(tmp_path / "column.png", frames, result.trace, grid_hw=(36, 1))
    row = render_decisions(tmp_path / "row.png", frames, result.trace, grid_hw=(1, 36))
    assert square.height_px < column.height_px < 3 * square.height_px
    assert square.height_px / 2 < row.height_px < square.height_px
    assert png_size(column.path) == (column.width_px, column.height_px)


def test_a_qwen_frame_grid_is_the_one_the_processor_made(proxy, frames: np.ndarray) -> None:
    sample = traced(proxy, frames, "fastv").trace.samples[0]
    assert sample.grid_hw == (6, 6) and sample.temporal_patch == 2


def test_a_missing_trace_names_the_switch(proxy, frames: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="trace=True"):
        render_decisions(tmp_path / "x.png", frames, None)


def test_any_sample_of_a_batch_is_drawn_with_its_method(proxy, frames: np.ndarray, tmp_path: Path) -> None:
    trace = traced(proxy, frames, "hieravid").trace
    batch = dataclasses.replace(trace, samples=[None, trace.samples[0]])
    picture = render_decisions(tmp_path / "second.png", frames, batch, sample=1)
    assert picture.panels[1].startswith("Stage 1") and any("relevance r (Eq. 8)" in t for t in picture.panels)
    with pytest.raises(ValueError, match="sample 0 of the trace has no video"):
        render_decisions(tmp_path / "first.png", frames, batch)
    with pytest.raises(ValueError, match="2 samples"):
        render_decisions(tmp_path / "third.png", frames, batch, sample=2)


def test_a_picture_stopped_mid_write_leaves_the_one_before(proxy, frames: np.ndarray, tmp_path: Path,
                                                           check_a_picture_stopped_mid_write) -> None:
    trace = traced(proxy, frames, "fastv").trace
    path = tmp_path / "decisions.png"
    check_a_picture_stopped_mid_write(lambda: render_decisions(path, frames, trace), path)


def test_the_picture_says_the_file_it_wrote(proxy, frames: np.ndarray, tmp_path: Path) -> None:
    from PIL import Image

    trace = traced(proxy, frames, "fastv").trace
    picture = render_decisions(tmp_path / "decisions", frames, trace)
    assert picture.path == tmp_path / "decisions.png" and picture.path.is_file()
    for suffix in (".jpg", ".jpeg", ".png"):
        picture = render_decisions(tmp_path / f"x{suffix}", frames, trace, dpi=97)
        with Image.open(picture.path) as image:
            assert image.size == (picture.width_px, picture.height_px)
