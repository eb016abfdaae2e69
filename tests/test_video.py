"""Tests of hieravid.video: real files written with PyAV, frames identified by their colour."""

from __future__ import annotations

import warnings
from fractions import Fraction

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
