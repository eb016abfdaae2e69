"""Decoding a video file with PyAV and sampling N frames from it.

The sampling rule (the one ``qwen-vl-utils`` and LLaVA/lmms-eval use, with rounding):

    indices = round(linspace(0, n - 1, N))        # n = frames in the clip, N = frames wanted

so the first and the last frame of the clip are always sampled and the others are spread evenly between
them (``np.round``: halves round to the even neighbour). ``N == 1`` gives the clip's first frame. When the
clip has fewer frames than N the same rule repeats frames: every output slot gets the frame nearest to its
evenly spaced position, so exactly N frames come back, in order.

Frames are numbered in presentation order over the WHOLE video, from 0; times are seconds from the video
stream's start. How a file is read:

1. a demuxing pass (packets only, nothing decoded) lists the presentation timestamp of every frame, which
   gives the exact frame count even when the container does not state it (``stream.frames == 0``, e.g.
   Matroska) and the time of every frame, used to cut the ``[start_s, end_s)`` window;
2. one decoding pass keeps only the sampled frames, converted with ``frame.to_ndarray(format="rgb24")``;
   it seeks to the keyframe before the first sampled frame and stops after the last one, so at most N
   frames are held in memory.

Frames are identified by their timestamps; files whose packets carry none number frames in decoding order.
When some sampled frame never comes out of the decoder (dropped or re-timed frames), one extra decoding pass
counts the frames as decoded, and the sampling is redone on that count. Packets an edit list hides (a cut
made without re-encoding) are not frames of the video. Times count from the first frame shown (a stream's
stated start, or its first frame if that comes later, as in AVI files with B-frames).

Frames come upright, as players show them: a display matrix that rotates by a multiple of 90 degrees (how
phones store portrait recordings) is applied. ``fps`` is the average rate of the frames' own timestamps
(a variable-rate file's real average, not its nominal rate), ``duration_s`` the video stream's duration
from its header, unless the frames end well before it (a cut-off file: a warning says so) or the header
states none for the video stream alone (then the span the frames cover).
"""

from __future__ import annotations

import bisect
import math
import os
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np

__all__ = ["SampledVideo", "read_video", "sample_indices", "video_metadata", "write_test_video"]

_ENCODERS = ("libx264", "mpeg4")  # preferred first; both write .mp4 and .mkv


@dataclass(frozen=True, eq=False)
class SampledVideo:
    """N frames sampled from a video file.

    Attributes:
        frames: ``(N, H, W, 3)`` uint8 RGB frames, in presentation order.
        timestamps_s: presentation time of each sampled frame, seconds from the start of the video stream.
        frame_indices: index of each sampled frame in the whole video (presentation order, from 0); repeated
            when the clip has fewer than N frames.
        fps: the source's average frame rate, frames per second.
        duration_s: duration of the whole source video, seconds.
        source_frames: frames in the whole source video.
        path: the file read.
    """

    frames: np.ndarray
    timestamps_s: list[float]
    frame_indices: list[int]
    fps: float
    duration_s: float
    source_frames: int
    path: str

    @property
    def num_frames(self) -> int:
        """N, frames sampled."""
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        """Frame height, pixels."""
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        """Frame width, pixels."""
        return int(self.frames.shape[2])


def sample_indices(total: int, num_frames: int) -> list[int]:
    """Indices of ``num_frames`` frames spread evenly over ``total`` frames: ``round(linspace(0, total-1, N))``.

    Both ends are included; with ``total < num_frames`` indices repeat (nearest frame). Indices are into
    ``range(total)``, non-decreasing, exactly ``num_frames`` of them.
    """
    _check_num_frames(num_frames)
    if total < 1:
        raise ValueError(f"cannot sample from {total} frames: the clip has no frames")
    return [int(i) for i in np.round(np.linspace(0, total - 1, num_frames))]


def read_video(
    path: str | os.PathLike,
    num_frames: int,
    *,
    start_s: float | None = None,
    end_s: float | None = None,
) -> SampledVideo:
    """Decode ``path`` and return ``num_frames`` frames sampled evenly (see the module docstring for the rule).

    Args:
        path: a video file PyAV (FFmpeg) can read; its first video stream is used.
        num_frames: N >= 1, frames to return (exactly N, repeating frames when the clip is shorter).
        start_s: start of the clip, seconds from the video's start (inclusive); None = the beginning.
        end_s: end of the clip, seconds (exclusive); None = the end of the video.

    Returns:
        A :class:`SampledVideo` with ``frames`` of shape ``(N, H, W, 3)`` uint8.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: ``num_frames`` < 1, a bad window, or a file that is not a decodable video.
    """
    _check_num_frames(num_frames)
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"no video file at {str(file)!r}: check the path")
    if file.is_dir():
        raise ValueError(f"could not decode video at {str(file)!r}: it is a directory, not a video file")
    _check_window(start_s, end_s)
    if file.stat().st_size == 0:
        raise ValueError(f"could not decode video at {str(file)!r}: the file is empty (0 bytes)")
    try:
        return _read(file, num_frames, start_s, end_s)
    except av.FFmpegError as err:
        if isinstance(err, (PermissionError, FileNotFoundError, IsADirectoryError)):  # not the content's fault
            raise
        raise ValueError(f"could not decode video at {str(file)!r}: {err}") from err


def video_metadata(sampled: SampledVideo):
    """What Hugging Face video processors accept as ``video_metadata`` for ``sampled``'s frames.

    Returns a ``transformers.video_utils.VideoMetadata`` (a mapping: ``fps`` frames per second,
    ``total_num_frames`` of the source, ``frames_indices`` of the sampled frames in the source, ``duration``
    seconds, ``width``/``height`` pixels, ``video_backend="pyav"``), the same fields transformers' own PyAV
    loader fills. Qwen3-VL derives its frame timestamps from it (``frames_indices / fps``): exact for a
    constant frame rate, an approximation of ``sampled.timestamps_s`` for a variable one.

    Pass the frames with ``do_sample_frames=False`` (the default of the Qwen2-VL, Qwen2.5-VL and LLaVA-OneVision
    video processors): they are already sampled, and ``total_num_frames`` counts the source, not the array.
    """
    from transformers.video_utils import VideoMetadata

    return VideoMetadata(
        total_num_frames=sampled.source_frames,
        fps=sampled.fps,
        width=sampled.width,
        height=sampled.height,
        duration=sampled.duration_s,
        video_backend="pyav",
        frames_indices=list(sampled.frame_indices),
    )


def write_test_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 8) -> str:
    """Write ``frames`` ``(N, H, W, 3)`` uint8 RGB to a video file at ``fps`` frames per second.

    The container follows the suffix (``.mp4``, ``.mkv``, ...). The codec is H.264 (``libx264``, near-lossless
    ``crf=10``, keyframe every second, B-frames on) where this PyAV build has it, else MPEG-4 Part 2 (``mpeg4``);
    pixels are stored as yuv420p, so H and W must be even. Returns the codec name used.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] < 1:
        raise ValueError(
            f"frames must be a uint8 array (N, H, W, 3) with N >= 1, got dtype {frames.dtype} shape {frames.shape}"
        )
    height, width = int(frames.shape[1]), int(frames.shape[2])
    if height % 2 or width % 2:
        raise ValueError(f"frame size {height}x{width} must be even for yuv420p video: crop or pad by one pixel")
    if isinstance(fps, bool) or not isinstance(fps, int) or fps < 1:
        raise ValueError(f"fps must be a positive integer (frames per second), got {fps!r}")
    codec = _encoder()
    rate = Fraction(fps, 1)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = 1 / rate
        stream.codec_context.gop_size = fps
        if codec == "libx264":
            stream.codec_context.options = {"crf": "10"}
        else:
            stream.codec_context.bit_rate = 8_000_000
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return codec


# ------------------------------------------------------------------------------------------------------------
# internals


def _check_num_frames(num_frames: int) -> None:
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be an integer >= 1 (frames to sample), got {num_frames!r}")


def _check_window(start_s: float | None, end_s: float | None) -> None:
    for name, value in (("start_s", start_s), ("end_s", end_s)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
            or not math.isfinite(value) or value < 0
        ):
            raise ValueError(f"{name} must be a finite time >= 0 in seconds or None, got {value!r}")
    if start_s is not None and end_s is not None and end_s <= start_s:
        raise ValueError(f"end_s ({end_s} s) must be after start_s ({start_s} s)")


def _encoder() -> str:
    for name in _ENCODERS:
        try:
            av.Codec(name, "w")
        except (av.FFmpegError, ValueError):  # not built into this FFmpeg
            continue
        return name
    raise RuntimeError(f"this PyAV build has none of the encoders {_ENCODERS}: install PyAV wheels from PyPI")


@dataclass(frozen=True)
class _Index:
    """Every frame of the video stream, from the demuxing pass."""

    pts: list[int] | None  # sorted presentation timestamps (stream time_base); None if packets lack them
    times_s: list[float]  # seconds from the first frame shown (see _origin), per frame
    count: int  # frames in the video
    start_s: float = 0.0  # where times_s counts from, on the stream's clock, seconds


def _open(file: Path) -> tuple[av.container.InputContainer, av.VideoStream]:
    container = av.open(str(file))
    if not container.streams.video:
        container.close()
        raise ValueError(f"could not decode video at {str(file)!r}: the file has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def _read(file: Path, num_frames: int, start_s: float | None, end_s: float | None) -> SampledVideo:
    container, stream = _open(file)
    with container:
        index = _demux_index(container, stream)
        fps = _frame_rate(stream, index)
        header = _header_duration(container, stream)
    if index.count == 0:
        raise ValueError(f"could not decode video at {str(file)!r}: the video stream has no frames")
    duration = _duration(file, index, fps, header)

    wanted = _select(index, num_frames, start_s, end_s, duration)
    kept = _decode_selected(file, index, sorted(set(wanted)), by_pts=index.pts is not None)
    if kept is None:  # the decoder dropped or re-timed frames: number them in decoding order, counted exactly
        index = _decode_index(file, fps)
        if index.count == 0:
            raise ValueError(f"could not decode video at {str(file)!r}: the decoder returned no frames")
        wanted = _select(index, num_frames, start_s, end_s, duration)
        kept = _decode_selected(file, index, sorted(set(wanted)), by_pts=False)
        if kept is None:
            raise ValueError(f"could not decode video at {str(file)!r}: frames changed between decoding passes")

    frames = np.stack([kept[i] for i in wanted])  # (N, H, W, 3)
    return SampledVideo(
        frames=frames,
        timestamps_s=[index.times_s[i] for i in wanted],
        frame_indices=wanted,
        fps=fps,
        duration_s=duration,
        source_frames=index.count,
        path=str(file),
    )


def _origin(stream: av.VideoStream, first_pts: int) -> int:
    """The timestamp times count from: the stream's stated start, or its first frame when that comes later
    (an AVI file with B-frames states 0 and shows its first frame one frame period later)."""
    return first_pts if stream.start_time is None else max(int(stream.start_time), first_pts)


def _demux_index(container: av.container.InputContainer, stream: av.VideoStream) -> _Index:
    """Presentation timestamps of all frames, by demuxing (no decoding). Packets marked to discard (those
    an edit list hides: decoded for the frames after them, never shown) are not frames."""
    pts: list[int] = []
    missing = 0
    for packet in container.demux(stream):
        if packet.size == 0 or packet.is_discard:  # the flush packet at the end, or a hidden one
            continue
        if packet.pts is None:
            missing += 1
        else:
            pts.append(int(packet.pts))
    if missing or not pts or stream.time_base is None:
        count = len(pts) + missing
        rate = _stated_rate(stream)
        step = 1 / rate if rate else 0.0
        return _Index(pts=None, times_s=[i * step for i in range(count)], count=count)
    pts.sort()
    origin = _origin(stream, pts[0])
    base = stream.time_base
    return _Index(
        pts=pts, times_s=[float((p - origin) * base) for p in pts], count=len(pts), start_s=float(origin * base)
    )


def _decode_index(file: Path, fps: float) -> _Index:
    """Count frames by decoding them all (fallback when packets cannot be trusted); times from the frames,
    counted from the same origin as :func:`_demux_index`'s."""
    container, stream = _open(file)
    with container:
        pts = [frame.pts for frame in container.decode(stream)]
        base = stream.time_base
        if pts and base is not None and None not in pts:
            origin = _origin(stream, pts[0])
            times = [float((p - origin) * base) for p in pts]
            return _Index(pts=None, times_s=times, count=len(pts), start_s=float(origin * base))
    return _Index(pts=None, times_s=[i / fps for i in range(len(pts))], count=len(pts))


def _frame_rate(stream: av.VideoStream, index: _Index) -> float:
    """Average frame rate in frames per second: from the frames' own times (a variable-rate file's nominal
    rate can be far from its real average), else the stream's stated rate, else 1."""
    if index.count > 1 and index.times_s[-1] > index.times_s[0]:
        return (index.count - 1) / (index.times_s[-1] - index.times_s[0])
    return _stated_rate(stream) or 1.0


def _stated_rate(stream: av.VideoStream) -> float | None:
    """The frame rate the stream states (average, else guessed, else base), frames per second; None if none."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else None


def _header_duration(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    """The video stream's duration as the file's header states it, seconds: the stream's own, or the
    container's when the video is its only stream (with others it may be, e.g., a longer audio track's);
    None when neither is stated."""
    if stream.duration and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration and len(container.streams) == 1:
        return container.duration / av.time_base
    return None


def _duration(file: Path, index: _Index, fps: float, header: float | None) -> float:
    """The video's duration, seconds: the header's, unless it states none or one that ends before the
    last frame starts (an estimate from the bitrate), then the span the frames cover; or unless the frames
    end well before it (a file cut off, e.g. by an interrupted download, keeps its header), then that span,
    with a warning."""
    covered = index.times_s[-1] + 1 / fps  # the last frame lasts one frame period
    if header is None:
        return covered
    # A container's duration may run from its clock's zero to the stream's end (Matroska) rather than from
    # the stream's start: of the two readings, the one nearer the frames'.
    spans = [header, header - index.start_s] if index.start_s > 0 else [header]
    span = min(spans, key=lambda d: abs(d - covered))
    if span < index.times_s[-1]:  # it ends before the last frame starts: an estimate
        return covered
    if span - covered <= max(2 / fps, 0.05 * span):
        return span
    warnings.warn(
        f"{str(file)!r}: its header says the video lasts {span:.3f} s but its {index.count} frames cover "
        f"{covered:.3f} s: the file may be truncated; frames are sampled from those it has",
        stacklevel=4,
    )
    return covered


def _select(index: _Index, num_frames: int, start_s: float | None, end_s: float | None, duration: float) -> list[int]:
    """Whole-video indices of the N sampled frames of the ``[start_s, end_s)`` clip."""
    first = 0 if start_s is None else bisect.bisect_left(index.times_s, start_s)
    stop = index.count if end_s is None else bisect.bisect_left(index.times_s, end_s)
    if stop <= first:
        raise ValueError(
            f"no frame lies in the window start_s={start_s}, end_s={end_s} (seconds); the video lasts "
            f"{duration:.3f} s with {index.count} frames: pick a window inside it"
        )
    return [first + i for i in sample_indices(stop - first, num_frames)]


def _upright(frame: av.VideoFrame, pixels: np.ndarray) -> np.ndarray:
    """``pixels`` (H, W, 3) of ``frame`` turned as its display matrix says (a multiple of 90 degrees
    counterclockwise; phones store portrait video this way), so they look as a player shows them."""
    turns = frame.rotation // 90 if frame.rotation % 90 == 0 else 0
    return np.ascontiguousarray(np.rot90(pixels, turns)) if turns % 4 else pixels


def _decode_selected(file: Path, index: _Index, wanted: list[int], by_pts: bool) -> dict[int, np.ndarray] | None:
    """Decode the frames ``wanted`` (sorted whole-video indices) in one sequential pass.

    ``by_pts``: identify frames by their presentation timestamp (seeking to the first wanted frame first);
    otherwise by their rank in decoding order from the start. Returns None when some wanted frame never
    came out of the decoder.
    """
    container, stream = _open(file)
    kept: dict[int, np.ndarray] = {}
    targets = set(wanted)
    size: tuple[int, int] | None = None
    with container:
        locate: Callable[[av.VideoFrame, int], int | None]
        if by_pts:
            assert index.pts is not None
            position = {p: i for i, p in enumerate(index.pts)}
            if wanted[0] > 0:
                container.seek(index.pts[wanted[0]], stream=stream, backward=True)
            locate = lambda frame, _rank: position.get(frame.pts)  # noqa: E731
        else:
            locate = lambda _frame, rank: rank  # noqa: E731
        for rank, frame in enumerate(container.decode(stream)):
            i = locate(frame, rank)
            if i is None:
                continue
            if i in targets and i not in kept:
                if size is None:
                    size = (frame.height, frame.width)
                # (H, W, 3) uint8; frames of another size (a resolution change) are scaled to the first's
                kept[i] = _upright(frame, frame.to_ndarray(format="rgb24", height=size[0], width=size[1]))
            if len(kept) == len(targets):
                break
    return kept if len(kept) == len(targets) else None
