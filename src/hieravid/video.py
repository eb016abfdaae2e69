"""Decoding a video file with PyAV and sampling N frames from it.

The sampling rule (the one ``qwen-vl-utils`` and LLaVA/lmms-eval use, with rounding):

    indices = round(linspace(0, n - 1, N))        # n = frames in the clip, N = frames wanted

so the first and the last frame of the clip are always sampled and the others are spread evenly between
them (``np.round``: halves round to the even neighbour). ``N == 1`` gives the clip's first frame. When the
clip has fewer frames than N the same rule repeats frames: every output slot gets the frame nearest to its
evenly spaced position, so exactly N frames come back, in order.

Frames are numbered in presentation order over the WHOLE video, from 0; times are seconds from the video
stream's start. The first video stream FFmpeg has a decoder for is read (a warning says so when there are
several); cover pictures stored as one-frame video streams (disposition ``attached_pic``) are not video.
How a file is read:

1. a demuxing pass (packets only, nothing decoded) lists the presentation timestamp of every frame, which
   gives the exact frame count even when the container does not state it (``stream.frames == 0``, e.g.
   Matroska), the time of every frame, used to cut the ``[start_s, end_s)`` window, and the keyframes;
2. a request whose ``(N, H, W, 3)`` result would not fit in the memory available is refused;
3. one decoding pass keeps only the sampled frames, converted with ``frame.to_ndarray(format="rgb24")``:
   before a sampled frame whose keyframe lies more than a few frames past the previous sampled frame, it
   seeks to that keyframe (so a long video with N frames wanted decodes about N groups of pictures, not
   every frame between the first and the last sampled), and it stops after the last one, so at most N
   frames are held in memory.

Frames are identified by their timestamps, and every frame that comes out of the decoder must be the next
one the index lists. Files whose packets carry no timestamps, and AVI files whose frames are reordered
(B-frames: AVI stores no presentation times, FFmpeg stamps frames with their decoding rank), number frames
in the order the decoder gives them out, from the start. When the frames that come out do not match the
index (dropped or re-timed frames, stamps that are not presentation times), one extra decoding pass counts
the frames as decoded, and the sampling, ``fps`` and ``duration_s`` are redone on that count (times from
the decoded frames' own stamps where they run in order, else ``rank / the stated rate``: the packets' times
were not the frames', as where joined segments each restart their clock). A packet the decoder refuses as
damaged (VP9's decoder refuses damage H.264's conceals; frames whose keyframe was cut away) gives no frame,
as in FFmpeg's own tools: the frames are then counted as decoded, and a warning says so. Packets an edit
list hides (a cut made without re-encoding) are not frames of the video, nor are
packets at the end of the stream the demuxer marks corrupt (a frame cut off with the file; a warning says
so). The path is always opened as a file, never read as an FFmpeg protocol (``pipe:0``); pipes and devices
are refused. Times count from the first frame
shown (a stream's stated start, or its first frame if that comes later, as in AVI files with B-frames).

Frames come upright, as players show them: a display matrix that rotates by a multiple of 90 degrees (how
phones store portrait recordings) is applied. ``fps`` is the average rate of the frames' own timestamps
(a variable-rate file's real average, not its nominal rate), ``duration_s`` the video stream's duration
from its header, unless the frames end well before it (a cut-off file: a warning says so) or the header
states none for the video stream alone (then the span the frames cover). The last frame lasts as long as
its packet states (a recording whose last frame is held), else one frame period.
"""

from __future__ import annotations

import bisect
import math
import os
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import av
import numpy as np

from hieravid.files import is_stream, replaced_path
from hieravid.warning import HieravidWarning

if TYPE_CHECKING:
    from transformers.video_utils import VideoMetadata

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
        ValueError: ``num_frames`` < 1, a bad window, a file that is not a decodable video, or N frames too
            many for the memory available.
    """
    _check_num_frames(num_frames)
    if os.fspath(path) == "":  # Path("") is the current directory
        raise ValueError("the video path is empty: give the path of a video file")
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"no video file at {str(file)!r}: check the path")
    if file.is_dir():
        raise ValueError(f"could not decode video at {str(file)!r}: it is a directory, not a video file")
    _check_window(start_s, end_s)
    if not file.is_file():
        raise ValueError(
            f"could not decode video at {str(file)!r}: it is not a regular file (a pipe or a device): save the "
            "video to a file first"
        )
    if file.stat().st_size == 0:
        raise ValueError(f"could not decode video at {str(file)!r}: the file is empty (0 bytes)")
    try:
        return _read(file, num_frames, start_s, end_s)
    except av.error.InvalidDataError as err:  # while decoding (listing the frames has its own message)
        raise ValueError(
            f"could not decode video at {str(file)!r}: FFmpeg found damaged data while decoding its frames "
            f"({err.strerror}): re-download the file, or re-encode it skipping what is damaged"
        ) from err
    except av.FFmpegError as err:
        if isinstance(err, (PermissionError, FileNotFoundError, IsADirectoryError)):  # not the content's fault
            raise
        raise ValueError(f"could not decode video at {str(file)!r}: {err}") from err


def video_metadata(sampled: SampledVideo) -> VideoMetadata:
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
    pixels are stored as yuv420p, so H and W must be even. The file is written whole or not at all (a
    temporary file beside it, renamed over it). Returns the codec name used.
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
    if is_stream(path):  # a pipe or a device: written into, as it comes
        _encode(path, frames, codec, rate, fps)
        return codec
    target = Path(os.path.realpath(os.path.abspath(path)))
    try:
        with replaced_path(target) as tmp:  # a run stopped mid-write leaves the file before it, not a part
            _encode(tmp, frames, codec, rate, fps)
    except OSError as err:
        raise OSError(err.errno, f"could not write the video {str(path)!r}: {err.strerror or err}") from err
    return codec


def _encode(path: str | os.PathLike, frames: np.ndarray, codec: str, rate: Fraction, fps: int) -> None:
    """Encode ``frames`` (checked by :func:`write_test_video`) into a new file at ``path``."""
    height, width = int(frames.shape[1]), int(frames.shape[2])
    with av.open(_url(path), mode="w") as container:
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
    """Every frame of the video stream, from the demuxing pass (or, as a fallback, from decoding)."""

    pts: list[int] | None  # sorted presentation timestamps (stream time_base); None: frames are numbered in
    #                        the order the decoder gives them out
    times_s: list[float]  # seconds from the first frame shown (see _origin), per frame
    count: int  # frames in the video
    start_s: float = 0.0  # where times_s counts from, on the stream's clock, seconds
    keys: tuple[int, ...] = ()  # sorted timestamps of the keyframes (where decoding can start after a seek)
    # Keyframe timestamp -> the timestamp to seek to: its packet's decoding timestamp, which a container
    # without an index (MPEG-TS, MPEG-PS) seeks by; a seek to the presentation time of a keyframe followed
    # by B-frames would land one group of pictures late there.
    key_seeks: dict[int, int] = field(default_factory=dict)
    last_duration_s: float | None = None  # how long the last frame is shown, seconds; None: not stated
    damaged: int = 0  # packets the demuxer marked corrupt (incomplete), left out
    undecodable: int = 0  # packets the decoder refused as damaged, left out (an index made by decoding)


# A cover picture (disposition AV_DISPOSITION_ATTACHED_PIC) is stored as a one-frame video stream: not the video.
_ATTACHED_PIC = 0x0400

# A seek flushes the decoder (and its threads), about the cost of decoding a few frames: seek only to skip more.
_SEEK_MIN_SKIP = 12  # frames


def _video_streams(container: av.container.InputContainer) -> list[av.VideoStream]:
    """The container's video streams, cover pictures left out."""
    return [s for s in container.streams.video if not _disposition(s) & _ATTACHED_PIC]


def _disposition(stream: av.VideoStream) -> int:
    """The stream's disposition flags as an integer (an ``IntFlag`` from PyAV 17.1, a flag with a ``value``
    before)."""
    flags = getattr(stream, "disposition", 0) or 0
    return int(getattr(flags, "value", flags))


def _url(path: str | os.PathLike) -> str:
    """What FFmpeg opens as the file at ``path``: a bare name such as ``take2:cut.mp4`` or ``pipe:0`` would
    otherwise name a protocol."""
    return "file:" + os.path.abspath(path)


def _demux(container: av.container.InputContainer, stream: av.VideoStream) -> Iterator[av.Packet]:
    """``container.demux(stream)``, ended cleanly where PyAV's raises IndexError: after the last packet, when
    the demuxer found a stream the header did not list (a track starting past what FFmpeg reads at opening,
    as in joined MPEG-TS segments), PyAV's flush looks the new stream up in the list of the old ones. Its
    flush packet for ``stream`` comes before that."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except (StopIteration, IndexError):
            return
        yield packet


def _packets(
    container: av.container.InputContainer, stream: av.VideoStream, cut_off: list[av.Packet] | None = None
) -> Iterator[av.Packet]:
    """``container.demux(stream)`` without the packets at the stream's end that the demuxer marks corrupt (a
    frame cut off with the file, which some decoders refuse outright; ``cut_off`` receives them). A corrupt
    packet followed by a sound one (damage a decoder conceals) is kept."""
    held: list[av.Packet] = []  # corrupt packets not yet known to be followed by a sound one
    for packet in _demux(container, stream):
        if packet.size and packet.is_corrupt:
            held.append(packet)
            continue
        if packet.size:
            yield from held
            held = []
        yield packet
    if cut_off is not None:
        cut_off.extend(held)


# How decoders refuse a damaged packet: most as invalid data, zlib's (PNG) as an external library's error,
# those that return -1 (GIF) as EPERM.
_DAMAGED = (av.error.InvalidDataError, av.error.ExternalError, av.error.PermissionError)


def _frames(
    container: av.container.InputContainer, stream: av.VideoStream, skipped: list[int]
) -> Iterator[av.VideoFrame]:
    """The frames of ``stream``, decoded from :func:`_packets` (the packets :func:`_demux_index` lists). A
    packet the decoder refuses as damaged (a decoder such as VP9's refuses where H.264's conceals; frames
    that need a keyframe cut away) gives no frame, as in FFmpeg's own tools; ``skipped`` receives the
    number of each such packet, counted from the first one read."""
    for number, packet in enumerate(_packets(container, stream)):
        try:
            frames = packet.decode()
        except _DAMAGED:
            skipped.append(number)
            continue
        yield from frames


def _open(file: Path, *, warn: bool = False) -> tuple[av.container.InputContainer, av.VideoStream]:
    """Open ``file`` and pick its first video stream (``warn``: say so when it has several)."""
    # A metadata tag that is not UTF-8 (some cameras write Latin-1) must not stop the read. A still image
    # named "shot%d.png" (or in a folder "run%d") is that file, not a numbered sequence of others (the option
    # only where the path has a "%": PyAV 15 can crash seeking in some formats opened with options their
    # demuxer does not take).
    url = _url(file)
    options = {"pattern_type": "none"} if "%" in url else {}
    container = av.open(url, metadata_errors="replace", options=options)
    if container.format.name == "tty":  # FFmpeg draws a text file (.txt, .nfo, ANSI art) as pictures
        container.close()
        raise ValueError(f"could not decode video at {str(file)!r}: it is a text file, not a video file")
    videos = _video_streams(container)
    if not videos:
        only_cover = bool(container.streams.video)
        container.close()
        what = " (only a cover picture)" if only_cover else ""
        raise ValueError(f"could not decode video at {str(file)!r}: the file has no video stream{what}")
    decodable = [s for s in videos if s.codec_context is not None]  # None: FFmpeg has no decoder for it
    if not decodable:
        container.close()
        raise ValueError(
            f"could not decode video at {str(file)!r}: this FFmpeg build has no decoder for its video stream's "
            "codec, or the file's header is damaged: re-encode it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4), "
            "or re-download it"
        )
    stream = decodable[0]
    if warn and len(videos) > 1:
        first = "first" if stream is videos[0] else "first one this FFmpeg build can decode"
        warnings.warn(
            f"{str(file)!r} has {len(videos)} video streams: the {first} (stream #{stream.index}, "
            f"{stream.codec_context.width}x{stream.codec_context.height}) is read; to read another, extract it "
            "first (e.g. ffmpeg -i IN -map 0:v:1 -c copy OUT.mkv)",
            HieravidWarning, stacklevel=4,
        )
    stream.thread_type = "AUTO"
    return container, stream


# Containers whose index (MP4's 'moov' atom) may be written last: a file cut off before it cannot be opened.
_INDEXED_LAST = (".mp4", ".m4v", ".mov", ".3gp")


def _read(file: Path, num_frames: int, start_s: float | None, end_s: float | None) -> SampledVideo:
    try:
        container, stream = _open(file, warn=True)
        with container:
            index = _demux_index(container, stream)
            stated = _stated_rate(stream)
            header = _header_duration(container, stream)
            height, width = stream.codec_context.height, stream.codec_context.width
    except (av.error.InvalidDataError, av.error.EOFError) as err:  # FFmpeg cannot even list the frames
        hint = (" (an MP4 cut off before its 'moov' index is unreadable: re-download or remux it)"
                if file.suffix.lower() in _INDEXED_LAST else "")
        raise ValueError(
            f"could not decode video at {str(file)!r}: FFmpeg cannot list its frames: it is not a video file, or "
            f"a damaged or incomplete one{hint}"
        ) from err
    if index.count == 0:
        raise ValueError(f"could not decode video at {str(file)!r}: the video stream has no frames")
    if index.damaged:
        warnings.warn(
            f"{str(file)!r}: {index.damaged} of its video packets are incomplete (a file cut off mid-frame, "
            "e.g. by an interrupted download): their frames are left out; frames are sampled from the others",
            HieravidWarning, stacklevel=3,
        )
    check_frames_memory(num_frames, min(num_frames, index.count), height, width)

    fps = _frame_rate(index, stated)
    wanted = _select(index, num_frames, start_s, end_s, fps)
    kept = _decode_selected(file, index, sorted(set(wanted)), by_pts=index.pts is not None)
    if kept is None:  # the decoder dropped or re-timed frames: number them in decoding order, counted exactly
        # The packets' times were not the frames': the stated rate, where there is one, over the rate they gave.
        index = _decode_index(file, stated or fps)
        refused = f" (it refused {index.undecodable} packets as damaged)" if index.undecodable else ""
        if index.count == 0:
            raise ValueError(f"could not decode video at {str(file)!r}: the decoder returned no frames{refused}")
        if index.undecodable:
            warnings.warn(
                f"{str(file)!r}: the decoder refused {index.undecodable} of its video packets as damaged (damaged "
                "data, or frames whose keyframe was cut away): their frames are left out; frames are sampled from "
                f"the {index.count} it decoded",
                HieravidWarning, stacklevel=3,
            )
        fps = _frame_rate(index, stated)  # of the frames decoded, not the packets listed
        wanted = _select(index, num_frames, start_s, end_s, fps)
        kept = _decode_selected(file, index, sorted(set(wanted)), by_pts=False)
        if kept is None:
            raise ValueError(f"could not decode video at {str(file)!r}: frames changed between decoding passes")

    frames = np.stack([kept[i] for i in wanted])  # (N, H, W, 3)
    return SampledVideo(
        frames=frames,
        timestamps_s=[index.times_s[i] for i in wanted],
        frame_indices=wanted,
        fps=fps,
        duration_s=_duration(file, index, fps, header),
        source_frames=index.count,
        path=str(file),
    )


def available_memory() -> int | None:
    """Bytes of memory new allocations can take: Linux's MemAvailable, or less where a cgroup (a container,
    a batch job) limits the process, else psutil's reading (psutil comes with accelerate); None when none
    can tell."""
    available = None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024  # stated in kB
    except (OSError, ValueError, IndexError):
        pass
    try:  # cgroup v2: the limit ("max" when none) less what the group already uses
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            left = int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = left if available is None else min(available, left)
    except (OSError, ValueError):
        pass
    if available is not None:
        return max(available, 0)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # not installed, or no reading on this system
        return None


def check_frames_memory(num_frames: int, distinct: int, height: int, width: int) -> None:
    """Refuse, before decoding, a request that cannot fit in memory: the ``distinct`` frames decoded and the
    ``(N, H, W, 3)`` uint8 result they are stacked into."""
    frame_bytes = height * width * 3
    need = (num_frames + distinct) * frame_bytes
    available = available_memory()
    if frame_bytes <= 0 or available is None or need <= available:
        return
    raise ValueError(
        f"num_frames={num_frames} frames of {width}x{height} pixels need {size_text(need)} (the frames decoded and "
        f"the array they are stacked into, RGB), more than the {size_text(available)} of memory available: ask for "
        f"fewer frames (at most about {available // (2 * frame_bytes)})"
    )


def size_text(size: int) -> str:
    """``size`` bytes in GiB, or MiB below one GiB."""
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def _origin(stream: av.VideoStream, first_pts: int) -> int:
    """The timestamp times count from: the stream's stated start, or its first frame when that comes later
    (an AVI file with B-frames states 0 and shows its first frame one frame period later)."""
    return first_pts if stream.start_time is None else max(int(stream.start_time), first_pts)


def _increasing(values: list[int]) -> bool:
    return all(a < b for a, b in zip(values, values[1:]))


def _in_order(values: list[int]) -> bool:
    """Whether ``values`` never go back and move on: one value, or the last above the first."""
    return all(a <= b for a, b in zip(values, values[1:])) and (len(values) == 1 or values[-1] > values[0])


def _decoding_order_stamps(container: av.container.InputContainer, stream: av.VideoStream, stamps: list[int]) -> bool:
    """Whether ``stamps`` (the packets' timestamps, in decoding order) are decoding ranks, not presentation
    times: AVI stores no presentation times, so FFmpeg stamps each packet with its rank, which is not the
    frame's place in presentation order when the decoder reorders frames (B-frames). Frames of other files
    whose stamps turn out not to be presentation times are caught while decoding (see :func:`_decode_run`)."""
    return container.format.name == "avi" and bool(stream.codec_context.has_b_frames) and _increasing(stamps)


def _demux_index(container: av.container.InputContainer, stream: av.VideoStream) -> _Index:
    """Presentation timestamps of all frames, by demuxing (no decoding). Packets marked to discard (those
    an edit list hides: decoded for the frames after them, never shown) are not frames."""
    stamps: list[int] = []  # in decoding order
    keys: list[tuple[int, int]] = []  # (pts, dts) of each keyframe
    last_pts, last_duration = None, 0  # the frame shown last: its timestamp and duration (stream time_base)
    missing = 0
    cut_off: list[av.Packet] = []
    for packet in _packets(container, stream, cut_off):
        if packet.size == 0 or packet.is_discard:  # the flush packet at the end, or a hidden one
            continue
        if packet.pts is None:
            missing += 1
            continue
        pts = int(packet.pts)
        if last_pts is None or pts >= last_pts:
            last_pts, last_duration = pts, int(packet.duration or 0)
        stamps.append(pts)
        if packet.is_keyframe:
            keys.append((pts, pts if packet.dts is None else int(packet.dts)))
    damaged = sum(not packet.is_discard for packet in cut_off)
    if missing or not stamps or stream.time_base is None:
        count = len(stamps) + missing
        rate = _stated_rate(stream)
        step = 1 / rate if rate else 0.0
        return _Index(pts=None, times_s=[i * step for i in range(count)], count=count, damaged=damaged)
    pts = sorted(stamps)
    origin = _origin(stream, pts[0])
    base = stream.time_base
    times = [float((p - origin) * base) for p in pts]
    last_duration_s = float(last_duration * base) if last_duration > 0 else None
    if _decoding_order_stamps(container, stream, stamps):  # frames numbered as they come out; the times hold
        return _Index(pts=None, times_s=times, count=len(pts), start_s=float(origin * base),
                      last_duration_s=last_duration_s, damaged=damaged)
    return _Index(
        pts=pts, times_s=times, count=len(pts), start_s=float(origin * base), keys=tuple(sorted(k for k, _ in keys)),
        key_seeks=dict(keys), last_duration_s=last_duration_s, damaged=damaged,
    )


def _decode_index(file: Path, fps: float) -> _Index:
    """Count frames by decoding them all (fallback when packets cannot be trusted); times from the frames,
    counted from the same origin as :func:`_demux_index`'s, when they increase in the order the frames come
    out (a frame may repeat the one before's: stamps rounded to a coarse time base), else ``rank / fps``."""
    container, stream = _open(file)
    skipped: list[int] = []
    with container:
        pts = [frame.pts for frame in _frames(container, stream, skipped)]
        base = stream.time_base
        if pts and base is not None and None not in pts and _in_order(pts):
            origin = _origin(stream, pts[0])
            times = [float((p - origin) * base) for p in pts]
            return _Index(pts=None, times_s=times, count=len(pts), start_s=float(origin * base),
                          undecodable=len(skipped))
    return _Index(pts=None, times_s=[i / fps for i in range(len(pts))], count=len(pts), undecodable=len(skipped))


def _frame_rate(index: _Index, stated: float | None) -> float:
    """Average frame rate in frames per second: from the frames' own times (a variable-rate file's nominal
    rate can be far from its real average), else the ``stated`` rate, else 1."""
    if index.count > 1 and index.times_s[-1] > index.times_s[0]:
        return (index.count - 1) / (index.times_s[-1] - index.times_s[0])
    return stated or 1.0


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


def _covered(index: _Index, fps: float) -> float:
    """Seconds the frames cover: up to the last one's start, plus how long it is shown (its packet's
    duration when stated, else one frame period)."""
    return index.times_s[-1] + (index.last_duration_s or 1 / fps)


def _duration(file: Path, index: _Index, fps: float, header: float | None) -> float:
    """The video's duration, seconds: the header's, unless it states none or one that ends before the
    last frame starts (an estimate from the bitrate), then the span the frames cover; or unless the frames
    end well before it (a file cut off, e.g. by an interrupted download, keeps its header), then that span,
    with a warning."""
    covered = _covered(index, fps)
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
        HieravidWarning, stacklevel=4,
    )
    return covered


def _select(index: _Index, num_frames: int, start_s: float | None, end_s: float | None, fps: float) -> list[int]:
    """Whole-video indices of the N sampled frames of the ``[start_s, end_s)`` clip."""
    first = 0 if start_s is None else bisect.bisect_left(index.times_s, start_s)
    stop = index.count if end_s is None else bisect.bisect_left(index.times_s, end_s)
    if stop <= first:
        raise ValueError(
            f"no frame lies in the window start_s={start_s}, end_s={end_s} (seconds); the video's {index.count} "
            f"frames cover {_covered(index, fps):.3f} s: pick a window inside it"
        )
    return [first + i for i in sample_indices(stop - first, num_frames)]


def _upright(frame: av.VideoFrame, pixels: np.ndarray) -> np.ndarray:
    """``pixels`` (H, W, 3) of ``frame`` turned as its display matrix says (a multiple of 90 degrees
    counterclockwise; phones store portrait video this way), so they look as a player shows them."""
    turns = frame.rotation // 90 if frame.rotation % 90 == 0 else 0
    return np.ascontiguousarray(np.rot90(pixels, turns)) if turns % 4 else pixels


def _decode_selected(file: Path, index: _Index, wanted: list[int], by_pts: bool) -> dict[int, np.ndarray] | None:
    """Decode the frames ``wanted`` (sorted whole-video indices, no repeats) to ``(H, W, 3)`` uint8 arrays.

    ``by_pts``: identify frames by their presentation timestamp, in runs that each start with a seek to a
    keyframe (see :func:`_runs`); otherwise by their rank in decoding order, from the start. A run whose seek
    does not land on its keyframe (a container without an index, such as MPEG-PS, whose frames after a seek
    may carry no timestamps) sends the frames left to one pass from the start. Returns None when the frames
    that come out from the start do not match the index (a wanted frame never came out, or the timestamps
    are not presentation times).
    """
    container, stream = _open(file)
    kept: dict[int, np.ndarray] = {}
    size: list[tuple[int, int]] = []  # (H, W) of the first frame kept: later ones (a resolution change) scale to it

    def keep(i: int, frame: av.VideoFrame) -> None:
        if not size:
            size.append((frame.height, frame.width))
        height, width = size[0]
        kept[i] = _upright(frame, frame.to_ndarray(format="rgb24", height=height, width=width))

    with container:
        if not by_pts:
            return kept if _decode_by_rank(container, stream, wanted, keep, index.undecodable) else None
        assert index.pts is not None
        position = {p: i for i, p in enumerate(index.pts)}
        runs = _runs(index, wanted, position)
        for done, (key, targets) in enumerate(runs):
            if not _decode_run(container, stream, key, targets, position, keep, seek_to=index.key_seeks.get(key)):
                break
        else:
            return kept
    if runs[done][0] is None:  # decoded from the start, and the frames do not match the index
        return None
    rest = [i for _, targets in runs[done:] for i in targets]
    container, stream = _open(file)
    with container:
        return kept if _decode_run(container, stream, None, rest, position, keep) else None


def _decode_by_rank(
    container: av.container.InputContainer, stream: av.VideoStream, wanted: list[int],
    keep: Callable[[int, av.VideoFrame], None], undecodable: int = 0,
) -> bool:
    """Decode from the start, numbering frames in the order they come out; False if the last wanted never
    does, or if more than the index's ``undecodable`` packets are refused (the ranks would be off)."""
    targets = set(wanted)
    skipped: list[int] = []
    for rank, frame in enumerate(_frames(container, stream, skipped)):
        if len(skipped) > undecodable:
            return False
        if rank in targets:
            keep(rank, frame)
        if rank == wanted[-1]:
            return True
    return False


def _keyframe_before(index: _Index, pts: int) -> int | None:
    """Timestamp of the last keyframe shown at or before ``pts``; None if there is none."""
    j = bisect.bisect_right(index.keys, pts) - 1
    return index.keys[j] if j >= 0 else None


def _runs(index: _Index, wanted: list[int], position: dict[int, int]) -> list[tuple[int | None, list[int]]]:
    """``wanted`` split into runs of frames each decoded in one go: ``(key, frames)``, ``key`` the timestamp of
    the keyframe to seek to first, or None to decode from the start.

    A new run starts when the keyframe before a frame lies more than ``_SEEK_MIN_SKIP`` frames after the
    previous wanted frame: seeking there skips decoding everything between. The first run decodes from the
    start when its keyframe is the first one (or there is none before it).
    """
    runs: list[tuple[int | None, list[int]]] = []
    for i in wanted:
        key = _keyframe_before(index, index.pts[i])
        if not runs:
            runs.append((None if key is None or key == index.keys[0] else key, [i]))
        elif key is None or position[key] - runs[-1][1][-1] <= _SEEK_MIN_SKIP:
            runs[-1][1].append(i)
        else:
            runs.append((key, [i]))
    return runs


def _decode_run(
    container: av.container.InputContainer, stream: av.VideoStream, key: int | None, targets: list[int],
    position: dict[int, int], keep: Callable[[int, av.VideoFrame], None], seek_to: int | None = None,
) -> bool:
    """Decode the frames ``targets`` (sorted whole-video indices), after seeking to the keyframe shown at
    ``key`` (None: from the start), at its packet's decoding timestamp ``seek_to`` (default ``key``).

    Frames shown before that keyframe are skipped (after a seek, an open GOP's frames shown before its keyframe
    cannot be decoded). From the keyframe on, every frame that comes out must be the next one of the index, up
    to the one after the last target: False otherwise (a frame the decoder dropped, a seek that landed past the
    keyframe, or timestamps that are not presentation times, as in an AVI file with B-frames, whose frames
    come out in presentation order with their decoding ranks as timestamps).
    """
    if key is not None:
        container.seek(key if seek_to is None else seek_to, stream=stream, backward=True)
    expected = None if key is None else position[key]  # index of the next frame to come out
    counting = key is None
    pending = iter(targets)
    target = next(pending)
    for frame in _frames(container, stream, skipped=[]):  # a refused packet's frame never comes: a mismatch
        i = None if frame.pts is None else position.get(frame.pts)
        if i is None:  # not a frame of the video (e.g. one an edit list hides)
            continue
        if expected is None:  # from the start: count from the first frame that comes out
            expected = i
        if not counting:
            if i < expected:  # shown before the keyframe
                continue
            counting = True
        if i != expected:
            return False
        expected += 1
        if target is None:  # the frame after the last target came out in order too
            return True
        if i > target:
            return False
        if i == target:
            keep(i, frame)
            target = next(pending, None)
    return target is None
