"""Video-MME (Fu et al., CVPR 2025): 2700 multiple-choice questions on 900 videos, without (``videomme``) and with
(``videomme_sub``) subtitles.

Data: the official release on Hugging Face, ``lmms-lab/Video-MME``: the annotation parquet file, the video zips
(``videos_chunked_*.zip``, which unzip to ``data/``) and ``subtitle.zip`` (``subtitle/<videoID>.srt``). Layout
under ``--data-root``::

    videomme/videomme/test-00000-of-00001.parquet   columns videoID, question_id, duration, domain,
                                                    sub_category, task_type, question, options, answer
    videomme/data/<videoID>.mp4                     (.MP4 and .mkv are found too)
    videomme/subtitle/<videoID>.srt                 (videomme_sub only; a video without one gets
                                                    "No subtitles available", as in lmms-eval)

Reading the parquet file needs ``pyarrow`` (``pip install pyarrow``).

Prompts and scoring follow lmms-eval's ``videomme`` and ``videomme_w_subtitle`` tasks with their default
settings, 16 new tokens, the option read by lmms-eval's ``extract_mcq_answer``
(:func:`hieravid.eval.choice.videomme_option`). With subtitles, the lines shown are those on screen at
``linspace(0, n - 1, num_frames)`` (floored) of the video's n frames, in lmms-eval's order, where lmms-eval uses
its fixed 32 frames (the same prompts at ``--num-frames 32``). The score is the accuracy in percent; per-duration
accuracies (short, medium, long) are in the details.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from hieravid.eval.choice import videomme_option
from hieravid.eval.tasks import (
    Sample,
    Score,
    Task,
    find_video,
    register_task,
    require_file,
)
from hieravid.warning import HieravidWarning

__all__ = ["VideoMME", "VideoMMESubtitles", "parse_srt", "subtitle_text"]

INSTRUCTION = (
    "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
    "Respond with only the letter (A, B, C, or D) of the correct option."
)
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
SUBTITLE_HEADER = "This video's subtitles are listed below: \n"
SUBTITLE_POST_PROMPT = "The best answer is:"
NO_SUBTITLES = "No subtitles available"
_FONT = re.compile(r'<font color="white" size=".72c">(.*?)</font>')
_COLUMNS = ("videoID", "question_id", "duration", "question", "options", "answer")
PARQUET = Path("videomme") / "test-00000-of-00001.parquet"


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise RuntimeError(f"reading Video-MME's {path.name} needs pyarrow: pip install pyarrow") from err
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises its own error types for broken files
        raise ValueError(f"{path} is not a readable parquet file ({err}): download it again") from err
    missing = [c for c in _COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}: expected the lmms-lab/Video-MME annotation file")
    return table.to_pylist()


def parse_srt(path: Path) -> list[tuple[float, float, str]]:
    """(start s, end s, text) of each cue of an .srt file, in file order; a repeated time range keeps its first
    place and its last text (lmms-eval reads the cues into a dict keyed by time range).

    Raises:
        ValueError: a cue whose time line cannot be read.
    """
    cues: dict[tuple[float, float], str] = {}
    try:
        content = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err}): convert it to UTF-8") from None
    for section in content.split("\n\n"):
        if not section.strip():
            continue
        lines = section.split("\n")
        if len(lines) < 3:
            continue
        try:
            start, end = (_srt_seconds(t) for t in lines[1].split(" --> "))
        except ValueError as err:
            raise ValueError(f"{path}: cannot read the subtitle time line {lines[1]!r}") from err
        cues[(start, end)] = " ".join(lines[2:])
    return [(start, end, text) for (start, end), text in cues.items()]


def _srt_seconds(stamp: str) -> float:
    hours, minutes, rest = stamp.split(":")
    seconds, millis = rest.split(",")
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds) + int(millis) / 1000


def subtitle_text(cues: list[tuple[float, float, str]], fps: float, total_frames: int, num_frames: int) -> str:
    """The subtitle lines on screen at ``num_frames`` frames spread over the video, one per line.

    Frames are ``linspace(0, total_frames - 1, num_frames)`` floored; a cue covers frames
    ``[int(start * fps), int(end * fps))``; each cue appears once, in the order of a Python set of cue indices
    (lmms-eval's order, which is not always the time order), and only its text inside the white ``<font>`` tag.
    """
    spans = [(int(start * fps), int(end * fps), text) for start, end, text in cues]
    frames = np.linspace(0, total_frames - 1, num_frames, dtype=int).tolist()
    shown = [i for f in frames for i, (first, last, _) in enumerate(spans) if first <= f < last]
    lines = []
    for index in list(set(shown)):
        found = _FONT.findall(spans[index][2])
        if found:
            lines.append(found[0])
    return "\n".join(lines)


class VideoMME(Task):
    name = "videomme"
    layout = (
        "<data-root>/videomme/videomme/test-00000-of-00001.parquet, <data-root>/videomme/data/<videoID>.mp4 "
        "and <data-root>/videomme/subtitle/<videoID>.srt (Hugging Face dataset lmms-lab/Video-MME, zips unzipped)"
    )

    def load(self, data_root: Path) -> list[Sample]:
        root = Path(data_root) / "videomme"
        rows = _read_parquet(require_file(root / PARQUET, "Video-MME annotations", self.layout))
        return [self._sample(root, row) for row in rows]

    def _sample(self, root: Path, row: dict[str, Any]) -> Sample:
        sample_id = str(row.get("question_id"))
        meta = {"group": row.get("duration"), "video_id": row.get("videoID")}
        options = row.get("options")
        if any(row.get(c) is None for c in _COLUMNS) or not isinstance(options, (list, tuple)) or not options:
            return Sample(id=sample_id, task=self.name, question="", meta=meta, error=f"question {sample_id} has missing fields")
        options = [str(o) for o in options]
        question = f"{row['question']}\n" + "\n".join(options)
        data = root / "data"
        video_id = str(row["videoID"])
        video = find_video([data / f"{video_id}.mp4", data / f"{video_id}.MP4", data / f"{video_id}.mkv"])
        meta["subtitle"] = str(root / "subtitle" / f"{video_id}.srt")
        answer = str(row["answer"]).strip()
        if answer.upper() not in ("A", "B", "C", "D"):  # what the prompt asks for and the answer parser reads
            return Sample(id=sample_id, task=self.name, question=question, options=options, meta=meta,
                          error=f"answer {row['answer']!r} of {sample_id} is not an option letter (A-D)")
        return Sample(id=sample_id, task=self.name, question=question, answer=answer, options=options,
                      video=str(video), meta=meta)

    def prompt(self, sample: Sample, video: Any | None) -> str:
        return f"{INSTRUCTION}\n{sample.question}\n{POST_PROMPT}"

    def score(self, sample: Sample, prediction: str) -> Score:
        letter = videomme_option(prediction)
        if letter is None:
            return Score(0.0, parsed=None, failure=f"no option letter in the answer {prediction!r}")
        return Score(1.0 if letter.lower() == str(sample.answer).lower() else 0.0, parsed=letter)


class VideoMMESubtitles(VideoMME):
    name = "videomme_sub"
    prompt_files = ("subtitle",)

    def load(self, data_root: Path) -> list[Sample]:
        samples = super().load(data_root)
        folder = Path(data_root) / "videomme" / "subtitle"
        if samples and not folder.is_dir():
            warnings.warn(
                f"videomme_sub: no subtitle folder at {folder}, so every question is asked with "
                f"{NO_SUBTITLES!r}: unzip subtitle.zip there (its answers are asked again once it is there)",
                HieravidWarning, stacklevel=2,
            )
        return samples

    def prompt(self, sample: Sample, video: Any | None) -> str:
        path = Path(sample.meta["subtitle"])
        if not path.is_file():
            subtitles = NO_SUBTITLES
        else:
            if video is None:
                raise ValueError("videomme_sub needs the decoded video to pick the subtitles on screen")
            cues = parse_srt(path)
            subtitles = subtitle_text(cues, video.fps, video.source_frames, video.num_frames)
        return f"{SUBTITLE_HEADER}{subtitles}\n{INSTRUCTION}\n{sample.question}\n{SUBTITLE_POST_PROMPT}"


register_task(VideoMME())
register_task(VideoMMESubtitles())
