"""Tests of hieravid.video: real files written with PyAV, frames identified by their colour."""

from __future__ import annotations

import os
import warnings
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from hieravid import video
from hieravid.video import SampledVideo, read_video, sample_indices, video_metadata, write_test_video

FPS = 8
NUM_FRAMES = 40
HEIGHT, WIDTH = 64, 96


def palette(n: int) -> np.ndarray:
    """A distinct solid colour per frame, ``(n, 3)`` uint8: levels 6 apart, far above the codec's error."""
    i = np.arange(n)
    return np.stack([8 + 6 * i, 247 - 6 * i, np.full(n, 128)], axis=1).astype(np.uint8)


def colour_video(n: int) -> np.ndarray:
    """``(n, H, W, 3)`` uint8 frames, frame i filled with ``palette(n)[i]``."""
    return np.broadcast_to(palette(n)[:, None, None, :], (n, HEIGHT, WIDTH, 3)).copy()


def identify(frames: np.ndarray, n: int) -> list[int]:
    """Index of the palette colour nearest to each frame's mean colour."""
    means = frames.reshape(len(frames), -1, 3).mean(axis=1)  # (N, 3)
    dist = np.abs(means[:, None, :] - palette(n)[None].astype(float)).sum(-1)  # (N, n)
    return dist.argmin(1).tolist()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, str]:
    """The same 40-frame colour video as .mp4 (frame count in the container) and .mkv (no frame count)."""
    folder = tmp_path_factory.mktemp("videos")
    out = {}
    for suffix in ("mp4", "mkv"):
        path = folder / f"colours.{suffix}"
        write_test_video(path, colour_video(NUM_FRAMES), fps=FPS)
        out[suffix] = str(path)
    return out


def test_a_video_stopped_mid_write_leaves_the_one_before(tmp_path, monkeypatch):
    path = tmp_path / "clip.mp4"
    write_test_video(path, colour_video(6), fps=FPS)
    before = path.read_bytes()
    made = []

    def stopped(array, format):
        if len(made) == 90:  # past the encoder's look-ahead: the muxer has written the start of the file
            raise KeyboardInterrupt
        made.append(1)
        return from_ndarray(array, format=format)

    class Stopping:  # PyAV, whose frames stop coming (its own types cannot be patched in older releases)
        VideoFrame = SimpleNamespace(from_ndarray=stopped)

        def __getattr__(self, name):
            return getattr(av, name)

    from_ndarray = av.VideoFrame.from_ndarray
    monkeypatch.setattr(video, "av", Stopping())
    with pytest.raises(KeyboardInterrupt):
        write_test_video(path, colour_video(100), fps=FPS)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_a_video_the_disk_cannot_take_is_named_as_given(tmp_path, monkeypatch):
    def full(path, *args):
        raise OSError(28, "No space left on device", f"file:{path}")

    monkeypatch.setattr(video, "_encode", full)
    with pytest.raises(OSError, match=r"could not write the video 'out/clip.mp4': No space left on device$"):
        write_test_video("out/clip.mp4", colour_video(2), fps=FPS)


def test_write_test_video_codec_and_count(tmp_path):
    path = tmp_path / "v.mp4"
    codec = write_test_video(path, colour_video(6), fps=FPS)
    assert codec in ("libx264", "mpeg4")
    assert codec in av.codecs_available
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (WIDTH, HEIGHT)
        assert sum(1 for _ in container.decode(stream)) == 6


def test_mkv_has_no_frame_count(clips):
    # the .mkv clip exercises the path where the container does not state the frame count
    with av.open(clips["mkv"]) as container:
        assert container.streams.video[0].frames == 0
    with av.open(clips["mp4"]) as container:
        assert container.streams.video[0].frames == NUM_FRAMES


@pytest.mark.parametrize("suffix", ["mp4", "mkv"])
@pytest.mark.parametrize(
    "n, expected",
    [
        (8, [0, 6, 11, 17, 22, 28, 33, 39]),  # round(linspace(0, 39, 8)): 0, 5.57, 11.1, 16.7, 22.3, ...
        (1, [0]),
        (2, [0, 39]),
        (NUM_FRAMES, list(range(NUM_FRAMES))),
    ],
)
def test_samples_follow_the_documented_rule(clips, suffix, n, expected):
    sampled = read_video(clips[suffix], n)
    assert isinstance(sampled, SampledVideo)
    assert sampled.frames.shape == (n, HEIGHT, WIDTH, 3)
    assert sampled.frames.dtype == np.uint8
    assert sampled.frame_indices == expected == sample_indices(NUM_FRAMES, n)
    assert identify(sampled.frames, NUM_FRAMES) == expected
    np.testing.assert_allclose(sampled.timestamps_s, [i / FPS for i in expected], atol=1e-6)
    assert sampled.fps == pytest.approx(FPS)
    assert sampled.duration_s == pytest.approx(NUM_FRAMES / FPS, abs=1 / FPS)
    assert sampled.source_frames == NUM_FRAMES
    assert sampled.path == clips[suffix]
    # solid colours survive the codec almost exactly
    err = np.abs(sampled.frames.astype(int) - colour_video(NUM_FRAMES)[expected].astype(int)).max()
    assert err <= 6


@pytest.mark.parametrize("suffix", ["mp4", "mkv"])
def test_window(clips, suffix):
    # [2.0 s, 3.0 s) holds frames 16..23; round(linspace(0, 7, 5)) = 0, 2, 4, 5, 7 (3.5 rounds to even)
    sampled = read_video(clips[suffix], 5, start_s=2.0, end_s=3.0)
    assert sampled.frame_indices == [16, 18, 20, 21, 23]
    assert identify(sampled.frames, NUM_FRAMES) == [16, 18, 20, 21, 23]
    assert all(2.0 <= t < 3.0 for t in sampled.timestamps_s)
    assert sampled.source_frames == NUM_FRAMES  # indices and count refer to the whole video
    tail = read_video(clips[suffix], 3, start_s=4.0)
    assert identify(tail.frames, NUM_FRAMES) == [32, 36, 39]
    head = read_video(clips[suffix], 2, end_s=1.0)
    assert identify(head.frames, NUM_FRAMES) == [0, 7]


def test_complete_files_raise_no_warning(clips):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in clips.values():
            read_video(path, 4)


def test_a_cut_off_file_is_sampled_from_the_frames_it_has_with_a_warning(clips, tmp_path):
    # A Matroska file cut in half keeps its header's duration (5 s) but only the first frames.
    data = open(clips["mkv"], "rb").read()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="may be truncated"):
        sampled = read_video(cut, 4)
    assert 0 < sampled.source_frames < NUM_FRAMES
    assert sampled.duration_s == pytest.approx(sampled.source_frames / FPS)
    assert sampled.frame_indices == sample_indices(sampled.source_frames, 4)
    assert identify(sampled.frames, NUM_FRAMES) == sampled.frame_indices


def test_fewer_frames_than_requested_repeats_nearest(tmp_path):
    path = tmp_path / "short.mp4"
    write_test_video(path, colour_video(3), fps=FPS)
    sampled = read_video(path, 5)
    # round(linspace(0, 2, 5)) = round(0, 0.5, 1, 1.5, 2) = 0, 0, 1, 2, 2
    assert sampled.frames.shape == (5, HEIGHT, WIDTH, 3)
    assert sampled.frame_indices == [0, 0, 1, 2, 2]
    assert identify(sampled.frames, 3) == [0, 0, 1, 2, 2]
    assert sampled.source_frames == 3


def test_more_frames_than_the_clip_from_a_long_video(clips):
    sampled = read_video(clips["mp4"], 50)
    assert sampled.frames.shape[0] == 50
    ids = identify(sampled.frames, NUM_FRAMES)
    assert ids == sampled.frame_indices
    assert ids[0] == 0 and ids[-1] == NUM_FRAMES - 1 and sorted(ids) == ids
    assert set(ids) == set(range(NUM_FRAMES))


@pytest.mark.parametrize("total, n", [(1, 1), (1, 4), (7, 3), (100, 16), (16, 16), (5, 9)])
def test_sample_indices_properties(total, n):
    idx = sample_indices(total, n)
    assert len(idx) == n
    assert idx[0] == 0 and (n == 1 or idx[-1] == total - 1)
    assert all(b >= a for a, b in zip(idx, idx[1:]))
    assert all(0 <= i < total for i in idx)
    # every index is the frame nearest to its evenly spaced position
    exact = np.linspace(0, total - 1, n)
    assert np.all(np.abs(np.array(idx) - exact) <= 0.5)


def test_fallback_numbering_in_decoding_order(clips, monkeypatch):
    # When the timestamp-identified pass misses a frame, the reader counts frames by decoding and retries.
    calls = []
    original = video._decode_selected

    def first_fails(file, index, wanted, by_pts):
        calls.append(by_pts)
        return None if len(calls) == 1 else original(file, index, wanted, by_pts)

    monkeypatch.setattr(video, "_decode_selected", first_fails)
    sampled = read_video(clips["mkv"], 8)
    assert calls == [True, False]
    assert identify(sampled.frames, NUM_FRAMES) == sampled.frame_indices == sample_indices(NUM_FRAMES, 8)
    np.testing.assert_allclose(sampled.timestamps_s, [i / FPS for i in sampled.frame_indices], atol=1e-6)


def test_video_metadata(clips):
    from transformers.video_utils import VideoMetadata

    sampled = read_video(clips["mp4"], 4, start_s=1.0)
    meta = video_metadata(sampled)
    assert isinstance(meta, VideoMetadata)
    assert meta.total_num_frames == NUM_FRAMES
    assert meta.fps == pytest.approx(FPS)
    assert meta.frames_indices == sampled.frame_indices
    assert meta.duration == pytest.approx(sampled.duration_s)
    assert (meta.height, meta.width) == (HEIGHT, WIDTH)
    np.testing.assert_allclose(meta.timestamps, sampled.timestamps_s, atol=1e-6)


def write_colours(path, n=NUM_FRAMES, *, pts=None, time_base=None, audio_s=None, rotation=None):
    """``colour_video(n)`` written with PyAV: frame i at ``pts[i]`` (default i) in ``time_base`` (default
    1/FPS), with B-frames, optionally a silent AAC track of ``audio_s`` seconds and a display rotation."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    time_base = time_base or Fraction(1, FPS)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.codec_context.time_base = time_base
        stream.codec_context.max_b_frames = 2
        if rotation is not None:
            stream.set_display_rotation(rotation)
        audio = container.add_stream("aac", rate=48000) if audio_s else None
        for i, pixels in enumerate(colour_video(n)):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = (i if pts is None else pts[i]), time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if audio is not None:
            size = audio.codec_context.frame_size or 1024
            for k in range(int(48000 * audio_s) // size):
                block = av.AudioFrame.from_ndarray(
                    np.zeros((1, size), np.float32), format=audio.codec_context.format.name, layout="mono"
                )
                block.sample_rate, block.pts, block.time_base = 48000, k * size, Fraction(1, 48000)
                container.mux(audio.encode(block))
            container.mux(audio.encode(None))
    return str(path)


def test_avi_with_b_frames_counts_from_its_first_frame(tmp_path):
    # AVI states a start of 0 but, with B-frames, shows its first frame one frame period later.
    path = write_colours(tmp_path / "b.avi")
    whole = read_video(path, NUM_FRAMES)
    np.testing.assert_allclose(whole.timestamps_s, [i / FPS for i in range(NUM_FRAMES)], atol=1e-6)
    assert identify(read_video(path, 8, start_s=2.0, end_s=3.0).frames, NUM_FRAMES) == list(range(16, 24))
    assert whole.duration_s == pytest.approx(NUM_FRAMES / FPS)


def test_frames_an_edit_list_hides_are_not_frames(clips, tmp_path):
    # A cut without re-encoding: an MP4 whose edit list hides the first 3 frames (decoded, never shown).
    cut = tmp_path / "cut.mp4"
    with av.open(clips["mkv"]) as source, av.open(str(cut), "w") as target:
        original = source.streams.video[0]
        stream = target.add_stream_from_template(original)
        shift = int(3 / FPS / original.time_base)
        for packet in source.demux(original):
            if packet.size:
                packet.pts -= shift
                packet.dts = None if packet.dts is None else packet.dts - shift
                packet.stream = stream
                target.mux(packet)
    whole = read_video(cut, NUM_FRAMES - 3)
    assert whole.source_frames == NUM_FRAMES - 3
    assert identify(whole.frames, NUM_FRAMES) == [i + 3 for i in whole.frame_indices]
    window = read_video(cut, 2, start_s=1.0, end_s=2.0)
    assert window.source_frames == NUM_FRAMES - 3 and window.frame_indices == [8, 15]
    assert identify(window.frames, NUM_FRAMES) == [11, 18]
    np.testing.assert_allclose(list(video_metadata(window).timestamps), [1.0, 1.875], atol=1e-6)


def test_matroska_starting_late_or_with_longer_audio_is_not_truncated(tmp_path):
    late = write_colours(tmp_path / "late.mkv", pts=[10 * FPS + i for i in range(NUM_FRAMES)])  # starts at 10 s
    long_audio = write_colours(tmp_path / "audio.mkv", audio_s=3 * NUM_FRAMES / FPS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in (late, long_audio):
            sampled = read_video(path, 8)
            assert sampled.duration_s == pytest.approx(NUM_FRAMES / FPS)
            assert identify(sampled.frames, NUM_FRAMES) == sampled.frame_indices == sample_indices(NUM_FRAMES, 8)
            assert sampled.timestamps_s[0] == 0


def test_variable_frame_rate_reports_its_real_average(tmp_path):
    gaps = [250] * 20 + [62] * 19  # ms: 4 frames per second, then about 16
    pts = [0] + list(np.cumsum(gaps))
    sampled = read_video(write_colours(tmp_path / "vfr.mkv", pts=pts, time_base=Fraction(1, 1000)), 4)
    assert sampled.fps == pytest.approx((NUM_FRAMES - 1) / (pts[-1] / 1000))
    np.testing.assert_allclose(sampled.timestamps_s, [pts[i] / 1000 for i in sampled.frame_indices], atol=1e-6)
    assert identify(sampled.frames, NUM_FRAMES) == sampled.frame_indices


@pytest.mark.skipif(not hasattr(av.video.stream.VideoStream, "set_display_rotation"),
                    reason="writing a display matrix needs PyAV >= 17.1 (lmms-eval 0.7 pins av < 16)")
def test_frames_come_upright(tmp_path):
    # Stored 96 wide x 64 high, red along the top; the display matrix turns it 90 degrees clockwise (how a
    # phone stores a portrait recording), so a player shows it 64 wide x 96 high, red along the right edge.
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    path = tmp_path / "portrait.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.set_display_rotation(-90)
        pixels = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
        pixels[:16] = (255, 0, 0)
        for i in range(4):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    sampled = read_video(path, 2)
    assert sampled.frames.shape == (2, WIDTH, HEIGHT, 3) and (sampled.height, sampled.width) == (WIDTH, HEIGHT)
    right, left = sampled.frames[:, :, -12:].mean(axis=(0, 1, 2)), sampled.frames[:, :, :-20].mean(axis=(0, 1, 2))
    assert right[0] > 240 and right[1] < 15 and np.abs(left - 128).max() < 8


def test_empty_and_cut_header_files_are_value_errors(clips, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(ValueError, match="empty"):
        read_video(empty, 4)
    head = tmp_path / "head.mkv"
    head.write_bytes(open(clips["mkv"], "rb").read()[:300])  # cut inside its header: FFmpeg reports EIO
    with pytest.raises(ValueError, match="could not decode video at .*head.mkv"):
        read_video(head, 4)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_video(path, 4)


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match="could not decode video at .*garbage.mp4"):
        read_video(path, 4)


def test_directory_is_not_a_video(tmp_path):
    with pytest.raises(ValueError, match="could not decode video at"):
        read_video(tmp_path, 4)


def test_an_empty_path_is_named_so_not_the_current_directory():
    with pytest.raises(ValueError, match="the video path is empty"):
        read_video("", 4)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, None])
def test_bad_num_frames(clips, bad):
    with pytest.raises(ValueError, match="num_frames"):
        read_video(clips["mp4"], bad)


@pytest.mark.parametrize(
    "start_s, end_s, match",
    [
        (3.0, 2.0, "end_s"), (-1.0, None, "start_s"), (float("nan"), None, "start_s"), (9.0, None, "no frame"),
        ("1", None, "start_s"), (None, "2", "end_s"),
    ],
)
def test_bad_window(clips, start_s, end_s, match):
    with pytest.raises(ValueError, match=match):
        read_video(clips["mp4"], 4, start_s=start_s, end_s=end_s)


def test_write_test_video_checks_its_input(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_test_video(tmp_path / "odd.mp4", np.zeros((2, 63, 96, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        write_test_video(tmp_path / "float.mp4", np.zeros((2, 64, 96, 3), np.float32))
    with pytest.raises(ValueError, match="fps"):
        write_test_video(tmp_path / "fps.mp4", np.zeros((2, 64, 96, 3), np.uint8), fps=0)


# ------------------------------------------------------------------------------------------------------------
# frames numbered by bars: up to 256 frames, each frame's index written in binary as 8 vertical bars

needs_x264 = pytest.mark.skipif("libx264" not in av.codecs_available, reason="this PyAV build has no libx264")


def bars(i: int) -> np.ndarray:
    """``(H, W, 3)`` uint8: bar b (12 pixels wide) white when bit b of ``i`` is set, else black."""
    bits = (i >> np.arange(8)) & 1  # (8,)
    row = np.repeat(np.where(bits, 235, 16), WIDTH // 8).astype(np.uint8)  # (W,)
    return np.broadcast_to(row[None, :, None], (HEIGHT, WIDTH, 3)).copy()


def read_bars(frames: np.ndarray) -> list[int]:
    """The index :func:`bars` wrote into each of ``frames`` ``(N, H, W, 3)``."""
    columns = frames[:, HEIGHT // 4: 3 * HEIGHT // 4].mean(axis=(1, 3))  # (N, W)
    centres = columns[:, WIDTH // 16:: WIDTH // 8] > 128  # (N, 8): the middle of each bar
    return [int(sum(1 << b for b in range(8) if bit[b])) for bit in centres]


def write_bars(path, n: int, *, fps: int = 25, options: dict | None = None, codec: str = "libx264",
               container_options: dict | None = None, pix_fmt: str = "yuv420p") -> str:
    """``bars(0..n-1)`` at ``fps``, with encoder ``options``."""
    rate = Fraction(fps, 1)
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, pix_fmt
        stream.codec_context.time_base = 1 / rate
        stream.codec_context.options = options or {}
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(bars(i), format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return str(path)


def output_pts(path) -> list[int]:
    """Timestamps of the frames as the decoder gives them out."""
    with av.open(str(path)) as container:
        return [frame.pts for frame in container.decode(container.streams.video[0])]


B_FRAMES = {"x264-params": "bframes=2:b-adapt=0:keyint=10", "crf": "10"}  # B-frames everywhere


@needs_x264
@pytest.mark.parametrize("caught_while_decoding", [False, True])
def test_avi_with_b_frames_returns_the_frames_its_indices_name(tmp_path, monkeypatch, caught_while_decoding):
    # AVI has no presentation times: FFmpeg stamps frames with their decoding rank, and the decoder gives them
    # out in presentation order with shuffled stamps; matching frames by stamp picked frames up to 3 away.
    path = write_bars(tmp_path / "b.avi", 30, fps=10, options=B_FRAMES)
    stamps = output_pts(path)
    assert stamps != sorted(stamps)  # the file does reorder frames
    if caught_while_decoding:  # without the AVI rule: the stamps' disorder is seen while decoding
        monkeypatch.setattr(video, "_decoding_order_stamps", lambda *args: False)
    for n, window in ((8, {}), (3, {}), (30, {}), (1, {"start_s": 1.2}), (4, {"start_s": 0.5, "end_s": 2.0})):
        sampled = read_video(path, n, **window)
        assert read_bars(sampled.frames) == sampled.frame_indices, (n, window)
        np.testing.assert_allclose(sampled.timestamps_s, [i / 10 for i in sampled.frame_indices], atol=1e-6)
    assert sampled.fps == pytest.approx(10) and sampled.source_frames == 30


def test_frames_1_or_3_pixels_high_are_read_channels_last(tmp_path):
    # transformers guesses the channel axis; (T, 1, W, 3) and (T, 3, W, 3) look channels-first to it.
    import tiny_models as tm
    from transformers.video_utils import VideoMetadata

    from hieravid.infer import LoadedModel, build_inputs

    rng = np.random.default_rng(0)
    for family in ("qwen2_vl", "qwen3_vl", "llava_onevision"):
        model = tm.build_model(family)
        processor = tm.build_processor(family, model, tmp_path / family)
        loaded = LoadedModel(model=model, processor=processor, family=family, name=family)
        for height in (1, 3):
            frames = rng.integers(0, 256, (4, height, 64, 3), dtype=np.uint8)
            got = build_inputs(loaded, frames, "what?")
            meta = VideoMetadata(total_num_frames=4, fps=1.0, frames_indices=[0, 1, 2, 3], height=height, width=64)
            prompt = processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what?"}]}],
                add_generation_prompt=True, tokenize=False,
            )
            want = processor(
                text=[prompt], videos=[frames.transpose(0, 3, 1, 2).copy()], video_metadata=[meta],
                do_sample_frames=False, return_tensors="pt", input_data_format="channels_first",
            )
            for key in ("pixel_values_videos", "video_grid_thw"):
                if key in want:
                    assert got[key].shape == want[key].shape and bool((got[key] == want[key]).all()), (family, key)


def test_too_elongated_frames_name_the_size_and_the_fix(tmp_path):
    import tiny_models as tm

    from hieravid.infer import LoadedModel, build_inputs

    frames = np.zeros((2, 10, 4000, 3), np.uint8)
    for family in ("qwen2_vl", "qwen3_vl", "llava_onevision"):
        model = tm.build_model(family)
        processor = tm.build_processor(family, model, tmp_path / family)
        loaded = LoadedModel(model=model, processor=processor, family=family, name=family)
        if family == "llava_onevision":  # resizes every frame to a square: no limit
            assert build_inputs(loaded, frames, "what?")["pixel_values_videos"].shape[1] == 2
            continue
        with pytest.raises(ValueError, match=r"4000x10 pixels .* 400 times .* crop or pad"):
            build_inputs(loaded, frames, "what?")


@needs_x264
def test_a_last_frame_held_long_is_not_a_truncation(tmp_path):
    # 6 frames 0.1 s apart, the last one shown for 60 s (a screen recording that stops changing)
    path = tmp_path / "hold.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        packets = []
        for i in range(6):
            frame = av.VideoFrame.from_ndarray(bars(i), format="rgb24")
            frame.pts = 100 * i
            packets += stream.encode(frame)
        packets += stream.encode(None)
        packets[-1].duration = 60_000
        for packet in packets:
            container.mux(packet)
    with av.open(str(path)) as container:
        if not any(packet.duration for packet in container.demux(video=0)):
            pytest.skip("this PyAV reports no packet durations when reading (PyAV 15 does not)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampled = read_video(path, 6)
    assert sampled.duration_s == pytest.approx(60.5)
    assert read_bars(sampled.frames) == sampled.frame_indices == list(range(6))


def test_too_many_frames_for_memory_are_refused_before_decoding(clips, monkeypatch):
    with pytest.raises(ValueError, match=r"num_frames=1000000000000 frames of 96x64 pixels need .* GiB"):
        read_video(clips["mp4"], 10**12)  # 18 PB: numpy would refuse its first array with a bare MemoryError

    def no_decoding(*args):
        raise AssertionError("decoded before the memory check")

    monkeypatch.setattr(video, "available_memory", lambda: 2**20)  # 1 MiB
    monkeypatch.setattr(video, "_decode_selected", no_decoding)
    # 100 frames out and the clip's 40 decoded ones, 18 KiB each; at most 1 MiB / (2 x 18 KiB) frames
    message = (r"num_frames=100 frames of 96x64 pixels need 2.5 MiB \(the frames decoded and the array they are "
               r"stacked into, RGB\), more than the 1.0 MiB .*at most about 28")
    with pytest.raises(ValueError, match=message):
        read_video(clips["mp4"], 100)


def test_unreadable_files_say_what_is_wrong_without_ffmpeg_codes(clips, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 100)
    cut = tmp_path / "cut.mp4"  # its 'moov' index is at the end, cut off
    data = open(clips["mp4"], "rb").read()
    cut.write_bytes(data[: len(data) // 2])
    for path in (text, cut):
        with pytest.raises(ValueError, match=r"at .*\.mp4'?: .*it is not a video file, or a damaged or incomplete") as info:
            read_video(path, 4)
        assert "'moov' index" in str(info.value) and "Errno" not in str(info.value)
    renamed = tmp_path / "notes.mkv"  # the 'moov' hint is for the containers that have one
    renamed.write_text("not a video\n" * 100)
    with pytest.raises(ValueError, match="not a video file") as info:
        read_video(renamed, 4)
    assert "'moov'" not in str(info.value)


@pytest.mark.filterwarnings("ignore:.*may be truncated")  # the decoder loses frames near the end too
def test_packets_the_decoder_refuses_leave_their_frames_out_with_a_warning(tmp_path):
    # Random bytes over the middle third of an MPEG-4 AVI: FFmpeg's decoder refuses some packets and conceals
    # the rest, as its own tools show them; a refused packet gives no frame.
    path = write_bars(tmp_path / "v.avi", 100, codec="mpeg4", options={"g": "10"})
    data = bytearray(open(path, "rb").read())
    rng = np.random.default_rng(0)
    for offset in rng.integers(len(data) // 3, 2 * len(data) // 3, 200):  # frames' data, not the header
        data[offset] = rng.integers(0, 256)
    damaged = tmp_path / "damaged.avi"
    damaged.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"the decoder refused \d+ of its video packets as damaged"):
        sampled = read_video(damaged, 100)
    assert sampled.num_frames == 100 and 0 < sampled.source_frames < 100
    distinct = sorted(set(sampled.timestamps_s))  # the frames left keep their own times (AVI: 1 / 25 s apart)
    assert len(distinct) == sampled.source_frames and distinct[-1] <= 99 / 25
    assert all(round(t * 25, 6).is_integer() for t in distinct)


needs_vp9 = pytest.mark.skipif("libvpx-vp9" not in av.codecs_available, reason="this PyAV build has no libvpx-vp9")


def remux_packets(source: str, path, change) -> str:
    """``source``'s video packets copied to ``path``, each through ``change(k, packet)`` (None: left out)."""
    with av.open(source) as inp, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for k, packet in enumerate(p for p in inp.demux(video=0) if p.size):
            packet = change(k, packet)
            if packet is not None:
                packet.stream = stream
                out.mux(packet)
    return str(path)


def zeroed(packet: av.Packet) -> av.Packet:
    """``packet`` with its data past the first two bytes zeroed, same times."""
    data = bytes(packet)
    out = av.Packet(data[:2] + bytes(len(data) - 2))
    out.pts, out.dts, out.time_base = packet.pts, packet.dts, packet.time_base
    return out


@needs_vp9
@pytest.mark.parametrize("num_frames", [8, 32])
def test_a_damaged_vp9_packet_loses_its_frame_only(tmp_path, num_frames):
    # VP9's decoder refuses damage H.264's conceals: one zeroed packet must not make the file unreadable.
    source = write_bars(tmp_path / "v.webm", 24, fps=8, codec="libvpx-vp9", options={"g": "8"})
    path = remux_packets(source, tmp_path / "damaged.webm", lambda k, p: zeroed(p) if k == 12 else p)
    with pytest.warns(UserWarning, match="refused 1 of its video packets"):
        sampled = read_video(path, num_frames)
    shown = [i + (i >= 12) for i in sampled.frame_indices]  # frame 12 is gone: the later ones move up
    assert sampled.source_frames == 23 and sampled.timestamps_s == [i / 8 for i in shown]
    intact = [(bar, i) for bar, i in zip(read_bars(sampled.frames), shown) if not 13 <= i < 16]
    assert [bar for bar, _ in intact] == [i for _, i in intact]  # 13-15 refer to frame 12: concealed


@needs_vp9
def test_a_vp9_clip_cut_away_from_its_keyframe_starts_at_the_next_one(tmp_path):
    source = write_bars(tmp_path / "v.webm", 24, fps=8, codec="libvpx-vp9", options={"g": "8"})
    path = remux_packets(source, tmp_path / "cut.webm", lambda k, p: None if k == 0 else p)
    with pytest.warns(UserWarning, match="refused 7 of its video packets"):
        sampled = read_video(path, 16)
    assert sampled.source_frames == 16 and read_bars(sampled.frames) == list(range(8, 24))
    assert sampled.timestamps_s == [i / 8 for i in range(16)]  # times count from the first frame shown


@needs_x264
def test_frames_sharing_a_timestamp_keep_their_times(tmp_path):
    # Twelve frames over 5 s stamped in milliseconds, stored at 1/25 s: two pairs round to one timestamp.
    path = str(tmp_path / "repeated.mkv")
    times_ms = [0, 40, 80, 500, 520, 1500, 1540, 1580, 3000, 3010, 3020, 5000]
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i, ms in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(bars(i), format="rgb24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with av.open(path) as container:
        stamps = [frame.pts for frame in container.decode(video=0)]
    assert len(set(stamps)) < len(stamps) == 12  # what this test is about
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not taken for a truncated file
        read = [read_video(path, n) for n in (1, 2, 12)]
    assert len({v.fps for v in read}) == 1 and read[0].fps == pytest.approx(11 / read[2].timestamps_s[-1])
    assert read[1].timestamps_s[-1] == read[2].timestamps_s[-1] == pytest.approx(5.0, abs=0.05)
    assert read_bars(read[2].frames) == list(range(12))


@needs_x264
def test_a_cut_off_faststart_mp4_reports_the_rate_of_the_frames_it_has(tmp_path):
    # Its index (at the front) lists all 200 frames; the data of about half is there, the last packet
    # partly (the demuxer marks it corrupt): the frames read are those whose data is complete, each at its
    # own time; rate and duration are those of the frames read, not of the index.
    whole = write_bars(tmp_path / "whole.mp4", 200, fps=25, container_options={"movflags": "faststart"},
                       options={"crf": "10"})
    data = open(whole, "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="may be truncated"), pytest.warns(UserWarning, match="incomplete"):
        sampled = read_video(cut, 8)
    assert 0 < sampled.source_frames < 200
    assert read_bars(sampled.frames) == [round(t * 25) for t in sampled.timestamps_s]
    assert sampled.timestamps_s[0] == 0 and sampled.frame_indices[-1] == sampled.source_frames - 1
    assert sampled.fps == pytest.approx((sampled.source_frames - 1) / sampled.timestamps_s[-1])
    assert sampled.duration_s == pytest.approx(sampled.timestamps_s[-1] + 1 / 25)


def write_two_streams(path) -> str:
    """A Matroska file with two video streams: bars(0..9), then solid grey."""
    with av.open(str(path), "w") as container:
        streams = [container.add_stream("mpeg4", rate=FPS) for _ in range(2)]
        for stream in streams:
            stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(10):
            for stream, pixels in zip(streams, (bars(i), np.full((HEIGHT, WIDTH, 3), 128, np.uint8))):
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, FPS)
                container.mux(stream.encode(frame))
        for stream in streams:
            container.mux(stream.encode(None))
    return str(path)


def test_several_video_streams_warn(tmp_path):
    with pytest.warns(UserWarning, match="has 2 video streams: the first .* is read"):
        sampled = read_video(write_two_streams(tmp_path / "two.mkv"), 4)
    assert read_bars(sampled.frames) == sampled.frame_indices == [0, 3, 6, 9]


def unknown_codec(path, data: bytes, count: int = 1) -> str:
    """``data`` (a Matroska file) with its first ``count`` video codec ids made ones FFmpeg does not know."""
    Path(path).write_bytes(data.replace(b"V_MPEG4/ISO/", b"V_QAQAQ/ISO/", count))
    return str(path)


def test_a_stream_no_decoder_reads_is_named_with_the_fix(clips, tmp_path):
    path = unknown_codec(tmp_path / "unknown.mkv", Path(clips["mkv"]).read_bytes())
    with pytest.raises(ValueError, match="no decoder for its video stream's codec.*re-encode it"):
        read_video(path, 4)


def test_a_first_stream_no_decoder_reads_gives_way_to_the_next(tmp_path):
    path = unknown_codec(tmp_path / "first.mkv", Path(write_two_streams(tmp_path / "two.mkv")).read_bytes())
    with pytest.warns(UserWarning, match=r"2 video streams: the first one this FFmpeg build can decode \(stream #1"):
        sampled = read_video(path, 4)
    assert np.abs(sampled.frames.astype(int) - 128).max() < 8  # the second stream: solid grey


def test_a_cover_picture_is_not_video(tmp_path):
    # an audio file with its cover picture (disposition attached_pic): no video to read
    path = tmp_path / "song.mp4"
    with av.open(str(path), "w") as container:
        audio = container.add_stream("aac", rate=48000)
        cover = container.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = WIDTH, HEIGHT, "yuvj420p"
        try:
            cover.disposition = av.stream.Disposition.attached_pic
        except (AttributeError, TypeError):  # PyAV before 17.1 reads a disposition but cannot set one
            pytest.skip("this PyAV cannot write a stream's disposition")
        picture = av.VideoFrame.from_ndarray(bars(5), format="rgb24").reformat(format="yuvj420p")
        picture.pts, picture.time_base = 0, Fraction(1, 1)
        container.mux(cover.encode(picture))
        container.mux(cover.encode(None))
        for k in range(10):
            block = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            block.sample_rate, block.pts, block.time_base = 48000, k * 1024, Fraction(1, 48000)
            container.mux(audio.encode(block))
        container.mux(audio.encode(None))
    with av.open(str(path)) as container:
        assert container.streams.video[0].disposition & av.stream.Disposition.attached_pic
    with pytest.raises(ValueError, match=r"no video stream \(only a cover picture\)"):
        read_video(path, 2)


SEEKABLE = {  # codec, suffix, encoder options: a keyframe every 50 frames, B-frames where the codec has them
    "x264-open-gop-mp4": ("libx264", "mp4", {"x264-params": "keyint=50:min-keyint=50:open-gop=1:bframes=3"}),
    "x264-open-gop-mkv": ("libx264", "mkv", {"x264-params": "keyint=50:min-keyint=50:open-gop=1:bframes=3"}),
    "hevc-b-frames-mp4": ("libx265", "mp4", {"x265-params": "log-level=error:keyint=50:open-gop=1:bframes=4"}),
    "vp9-webm": ("libvpx-vp9", "webm", {"g": "50", "deadline": "realtime", "cpu-used": "8"}),
    "mpeg4-b-frames-avi": ("mpeg4", "avi", {"g": "50", "bf": "2"}),
    "x264-b-frames-ts": ("libx264", "ts", {"x264-params": "keyint=50:min-keyint=50:bframes=3"}),  # no index
}


@pytest.mark.parametrize("name", list(SEEKABLE))
def test_seeking_to_each_keyframe_returns_the_frames_of_a_full_decode(tmp_path, monkeypatch, name):
    codec, suffix, options = SEEKABLE[name]
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {codec}")
    path = write_bars(tmp_path / f"v.{suffix}", 250, codec=codec, options=options)
    runs = []
    original = video._decode_run

    def recording(container, stream, key, targets, position, keep, **kwargs):
        runs.append(key)
        return original(container, stream, key, targets, position, keep, **kwargs)

    monkeypatch.setattr(video, "_decode_run", recording)
    for n, window in ((5, {}), (2, {}), (9, {"start_s": 1.9}), (3, {"start_s": 4.0, "end_s": 8.0}), (250, {})):
        runs.clear()
        sampled = read_video(path, n, **window)
        assert read_bars(sampled.frames) == sampled.frame_indices, (n, window)
        if n in (5, 2):  # targets far apart: one seek each after the first
            assert len(runs) == n and all(key is not None for key in runs[1:]), runs
        if n == 250:  # every frame: one run, from the start
            assert runs == [None]
        # the same pixels as decoding every frame from the start
        container, stream = video._open(Path(path))
        with container:
            index = video._demux_index(container, stream)
        everything = video._decode_selected(Path(path), index, sorted(set(sampled.frame_indices)), by_pts=False)
        assert all(np.array_equal(everything[i], frame) for i, frame in zip(sampled.frame_indices, sampled.frames))


def test_a_seek_that_misses_its_keyframe_reads_the_rest_from_the_start(tmp_path, monkeypatch):
    """MPEG-PS has no index: after a seek its first frames may carry no timestamp, so the run cannot check
    them against the index. The frames left are then decoded in one pass from the start, not by counting
    every frame first (the fallback for files whose timestamps cannot be trusted)."""
    if "mpeg2video" not in av.codecs_available:
        pytest.skip("this PyAV build has no mpeg2video")
    path = write_bars(tmp_path / "v.mpg", 250, codec="mpeg2video", options={"g": "50", "bf": "2"})
    runs, counted = [], []
    original = video._decode_run
    monkeypatch.setattr(video, "_decode_run", lambda *args, **kwargs: runs.append(args[2]) or original(*args, **kwargs))
    monkeypatch.setattr(video, "_decode_index", lambda *args: counted.append(args) or pytest.fail("counted"))
    sampled = read_video(path, 5)
    assert read_bars(sampled.frames) == sampled.frame_indices
    assert runs[0] is None and runs[-1] is None and any(key is not None for key in runs)  # a seek, then the start
    assert counted == []


def test_a_text_file_and_a_video_without_frames_are_named_so(tmp_path):
    """FFmpeg draws a .txt or .nfo file as pictures (its 'tty' reader): refused as text. A container
    whose header has a video stream but no frame after it ends before any: refused without FFmpeg's
    error code."""
    for name in ("notes.txt", "notes.nfo"):
        (tmp_path / name).write_text("not a video\n" * 100)
        with pytest.raises(ValueError, match="it is a text file, not a video file"):
            read_video(tmp_path / name, 4)
    empty = tmp_path / "empty.mkv"
    with av.open(str(empty), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height = 64, 48
        container.start_encoding()  # the header, then no frame
    with pytest.raises(ValueError, match="cannot list its frames") as info:
        read_video(empty, 4)
    assert "Errno" not in str(info.value)


@pytest.mark.parametrize("name", ["file:clip.mp4", "take2:cut.mp4", "pipe:0.mp4"])
def test_a_name_that_looks_like_a_protocol_names_the_file(tmp_path, monkeypatch, name):
    # FFmpeg reads "<word>:" as a protocol: "file:clip.mp4" would open clip.mp4, "pipe:0" standard input.
    monkeypatch.chdir(tmp_path)
    write_test_video(name, np.stack([bars(i) for i in range(10)]), fps=FPS)
    write_test_video("clip.mp4", np.stack([bars(200) for _ in range(4)]), fps=FPS)
    assert (tmp_path / name).is_file()
    sampled = read_video(name, 10)
    assert sampled.source_frames == 10 and read_bars(sampled.frames) == list(range(10))


@pytest.mark.parametrize("codec, pix_fmt", [("mjpeg", "yuvj420p"), ("mpeg4", "yuv420p"), ("rawvideo", "rgb24")])
def test_a_frame_cut_off_with_the_file_is_left_out(tmp_path, codec, pix_fmt):
    # AVI states no duration beyond its data, and its last packet, cut short, is marked corrupt: decoded, it
    # gave a damaged or concealed picture under the last frame's index, or (rawvideo) an FFmpeg error.
    whole = write_bars(tmp_path / "whole.avi", 100, codec=codec, pix_fmt=pix_fmt)
    data = open(whole, "rb").read()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="1 of its video packets are incomplete"):
        sampled = read_video(cut, 6)
    assert 0 < sampled.source_frames < 100
    assert read_bars(sampled.frames) == sampled.frame_indices
    assert sampled.frame_indices[-1] == sampled.source_frames - 1


@needs_x264
def test_segments_whose_clock_restarts_keep_the_stated_rate(tmp_path):
    # Two MPEG-TS segments joined byte for byte (an HLS download), each timed from 0: the packets' times
    # overlap, so frames are numbered in decoding order, each 1/25 s after the one before.
    parts = []
    for first in (0, 100):
        path = tmp_path / f"part{first}.ts"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
            for i in range(100):
                frame = av.VideoFrame.from_ndarray(bars(first + i), format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, 25)
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        parts.append(path.read_bytes())
    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(parts))
    sampled = read_video(joined, 4)
    assert sampled.source_frames == 200
    assert read_bars(sampled.frames) == sampled.frame_indices == [0, 66, 133, 199]
    assert sampled.fps == pytest.approx(25)
    assert sampled.timestamps_s == pytest.approx([i / 25 for i in sampled.frame_indices])


def test_a_pipe_is_refused_with_the_fix(tmp_path):
    fifo = tmp_path / "stream.mp4"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file .*save the video to a file first"):
        read_video(fifo, 4)


def test_a_track_name_that_is_not_utf8_does_not_stop_the_read(tmp_path):
    # Some cameras and editors write their metadata in Latin-1; the frames are all that is read here.
    path = write_bars(tmp_path / "v.mp4", 10)
    with av.open(str(path)) as container:
        handler = container.streams.video[0].metadata.get("handler_name", "")
    assert handler, "the muxer names the track"
    data = Path(path).read_bytes()
    assert data.count(handler.encode()) == 1
    Path(path).write_bytes(data.replace(handler.encode(), b"\xe9" * len(handler.encode())))
    sampled = read_video(path, 10)
    assert read_bars(sampled.frames) == list(range(10))


def write_ts(path, first: int, stop: int, *, audio: bool) -> bytes:
    """An MPEG-TS segment of ``stop - first`` noise frames at 25 fps (lossless: 230 KB a frame), with a
    silent audio track when ``audio``."""
    rng = np.random.default_rng(first)
    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.codec_context.options = {"preset": "ultrafast", "qp": "0"}
        sound = container.add_stream("aac", rate=16000) if audio else None
        for i in range(first, stop):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            container.mux(stream.encode(frame))
            if sound is not None:
                samples = av.AudioFrame.from_ndarray(np.zeros((1, 640), np.float32), format="fltp", layout="mono")
                samples.sample_rate, samples.pts = 16000, i * 640
                container.mux(sound.encode(samples))
        container.mux(stream.encode(None))
        if sound is not None:
            container.mux(sound.encode(None))
    return Path(path).read_bytes()


def test_a_stream_that_starts_past_the_probe_does_not_end_the_read(tmp_path):
    # Joined segments (a broadcast capture, HLS pieces): the audio track starts after the 5 MB FFmpeg reads
    # at opening, so the demuxer adds a stream while it runs.
    joined = tmp_path / "joined.ts"
    joined.write_bytes(write_ts(tmp_path / "a.ts", 0, 150, audio=False) + write_ts(tmp_path / "b.ts", 150, 200, audio=True))
    with av.open(str(joined)) as container:
        assert len(container.streams) == 1  # the audio is not known yet
    sampled = read_video(joined, 8)
    assert sampled.source_frames == 200 and sampled.frame_indices[-1] == 199


def test_a_damaged_png_frame_is_left_out_with_a_warning(tmp_path):
    # PNG in MOV (screen recordings, exports with alpha): a damaged zlib stream is an "external library" error.
    path = tmp_path / "v.mov"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "rgb24"
        rng = np.random.default_rng(0)
        for i in range(10):
            picture = bars(i)
            picture[-8:] = rng.integers(0, 256, (8, WIDTH, 3))  # noise: the compressed data fills the packet
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode(None))
    with av.open(str(path)) as container:
        packet = [p for p in container.demux(video=0) if p.size][5]
        middle = packet.pos + packet.size // 2
    data = bytearray(path.read_bytes())
    data[middle:middle + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="the decoder refused 1 of its video packets as damaged"):
        sampled = read_video(path, 9)
    assert sampled.source_frames == 9 and read_bars(sampled.frames) == [0, 1, 2, 3, 4, 6, 7, 8, 9]


def test_a_damaged_gif_is_read_as_far_as_it_decodes_not_called_a_permission_problem(tmp_path):
    # FFmpeg's GIF decoder returns -1 on damaged data, which reads as EPERM.
    path = tmp_path / "v.gif"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("gif", rate=8)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "rgb8"
        for i in range(6):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(bars(i), format="rgb24")))
        container.mux(stream.encode(None))
    good = path.read_bytes()
    refused = 0
    for start in range(0, len(good), 50):  # the tail zeroed from each point on, as a download cut short
        path.write_bytes(good[:start] + bytes(len(good) - start))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                read_video(path, 4)
            except ValueError:
                continue  # too little left to be a video: a clear error
        refused += any("refused" in str(w.message) for w in caught)
    assert refused > 0  # some cuts leave a packet the decoder refuses, and the frames before it are read


def test_a_still_whose_name_looks_like_a_numbered_sequence_is_that_file(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 10, np.uint8)).save(tmp_path / "shot%d.png")
    Image.fromarray(np.full((32, 32, 3), 250, np.uint8)).save(tmp_path / "shot1.png")  # what %d would match
    assert read_video(tmp_path / "shot%d.png", 1).frames.mean() < 20
    for folder in ("run%d", "run1"):  # a "%" in a folder's name is a name too
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full((32, 32, 3), 10 if "%" in folder else 250, np.uint8)).save(tmp_path / folder / "a.png")
    assert read_video(tmp_path / "run%d" / "a.png", 1).frames.mean() < 20
