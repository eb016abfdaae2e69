"""NExT-QA (Xiao et al., CVPR 2021) test set: multiple choice (``nextqa_mc``) and open-ended (``nextqa_oe``).

Data: the multiple-choice annotations from github.com/doc-doc/NExT-QA (``dataset/nextqa/test.csv``, with
``map_vid_vidorID.json``), the open-ended ones from github.com/doc-doc/NExT-OE (``dataset/nextqa/test.csv`` and
``add_reference_answer_test.json``), the videos (``NExTVideo``) from the NExT-QA download links. Layout under
``--data-root``::

    nextqa/mc/test.csv                          video,frame_count,width,height,question,answer,qid,type,a0,...,a4
    nextqa/oe/test.csv                          video,frame_count,width,height,question,answer,qid,type
    nextqa/oe/add_reference_answer_test.json    {"<video>": {"<qid>": "<second reference answer>"}}
    nextqa/map_vid_vidorID.json                 {"<video>": "<dir>/<video>"}
    nextqa/NExTVideo/<dir>/<video>.mp4          (or NExTVideo/<video>.mp4, lmms-eval's flat copy)

Prompts and scoring follow lmms-eval's ``nextqa_mc_test`` and ``nextqa_oe_test``: multiple choice asks
``question + "\\nA. <a0>" ... "\\nE. <a4>"`` and reads the option with MMMU's rule in lmms-eval's NExT-QA variant
(accuracy; lmms-eval guesses at random when no option is found, here that answer scores 0 and counts as failed);
open-ended asks ``question + "\\nAnswer a question using a short phrase or sentence."`` and scores WUPS@0
(:mod:`hieravid.eval.wups`; WUPS@0.9 and per-type scores are in the details).

Both generate up to 128 tokens. lmms-eval's NExT-QA tasks set no token limit, so there it is the model class's
default: 128 in its Qwen2-VL and Qwen3-VL models, 1024 in LLaVA-OneVision, LLaVA-Video and LLaVA-HF, 32768 in
Qwen2.5-VL. hieravid uses one limit for every model so that its scores do not depend on a model class's
setting: 128, which a short phrase or an option letter ends well before (and the answer is scored only up to
its first ``"\\n\\n"``, lmms-eval's stop string); ``--max-new-tokens`` sets another.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hieravid.eval.choice import mmmu_option
from hieravid.eval.tasks import (
    Sample,
    Score,
    Task,
    TaskResult,
    find_video,
    register_task,
    require_file,
)
from hieravid.eval.wups import Lexicon, NltkLexicon, nextqa_oe_score
from hieravid.warning import HieravidWarning

__all__ = ["NextQAMultipleChoice", "NextQAOpenEnded"]

LETTERS = "ABCDE"
OE_POST_PROMPT = "\nAnswer a question using a short phrase or sentence."
QTYPES = ("CW", "CH", "TN", "TC", "DB", "DC", "DL", "DO")
LAYOUT = (
    "<data-root>/nextqa/{mc,oe}/test.csv, <data-root>/nextqa/oe/add_reference_answer_test.json, "
    "<data-root>/nextqa/map_vid_vidorID.json and <data-root>/nextqa/NExTVideo/<dir>/<video>.mp4 "
    "(github.com/doc-doc/NExT-QA and github.com/doc-doc/NExT-OE)"
)


def _read_csv(path: Path, needed: Sequence[str]) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a byte order mark is not a column name
            reader = csv.DictReader(f)
            missing = [c for c in needed if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path} lacks the columns {missing}. Expected layout: {LAYOUT}")
            return list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path} is not a readable CSV file ({err}): download it again") from err


def _video_map(root: Path) -> dict[str, str]:
    path = root / "map_vid_vidorID.json"
    if not path.is_file():
        videos = root / "NExTVideo"
        if videos.is_dir() and any(p.is_dir() for p in videos.iterdir()):
            warnings.warn(
                f"no {path}: the videos in {videos}'s subfolders are found through it, so their questions "
                "fail as missing videos; put the file there (from the NExT-QA download)",
                HieravidWarning, stacklevel=3,
            )
        return {}
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): download it again") from err
    return {str(k): str(v) for k, v in mapping.items()} if isinstance(mapping, dict) else {}


def _video_path(root: Path, video: str, mapping: Mapping[str, str]) -> str:
    videos = root / "NExTVideo"
    candidates = []
    if video in mapping:
        candidates += [videos / f"{mapping[video]}.mp4", videos / f"{mapping[video]}.MP4"]
    candidates += [videos / f"{video}.mp4", videos / f"{video}.MP4"]
    return str(find_video(candidates))


class NextQAMultipleChoice(Task):
    name = "nextqa_mc"
    max_new_tokens = 128
    layout = LAYOUT
    _columns = ("video", "question", "answer", "qid", "type", "a0", "a1", "a2", "a3", "a4")

    def load(self, data_root: Path) -> list[Sample]:
        root = Path(data_root) / "nextqa"
        rows = _read_csv(require_file(root / "mc" / "test.csv", "NExT-QA multiple-choice annotations", LAYOUT), self._columns)
        mapping = _video_map(root)
        return [self._sample(root, row, mapping) for row in rows]

    def _sample(self, root: Path, row: dict[str, str], mapping: Mapping[str, str]) -> Sample:
        sample_id = f"{row['video']}_{row['qid']}"
        meta = {"group": "TN" if row["type"] == "TP" else row["type"]}  # before / after, as NExT-QA scores them
        if any(row.get(c) is None for c in self._columns):
            return Sample(id=sample_id, task=self.name, question="", meta=meta, error=f"row {sample_id} has missing fields")
        try:
            answer = int(row["answer"])
        except (TypeError, ValueError):
            answer = -1
        if not 0 <= answer < len(LETTERS) or any(row.get(f"a{i}") is None for i in range(5)):
            return Sample(id=sample_id, task=self.name, question="", meta=meta,
                          error=f"row {sample_id}: answer {row['answer']!r} must be an option index 0-4 with options a0-a4")
        options = [row[f"a{i}"].strip() for i in range(5)]
        question = "\n".join([row["question"].strip()] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)])
        return Sample(id=sample_id, task=self.name, question=question, answer=LETTERS[answer], options=options,
                      video=_video_path(root, row["video"], mapping), meta=meta)

    def score(self, sample: Sample, prediction: str) -> Score:
        letter = mmmu_option(prediction, dict(zip(LETTERS, sample.options or [])), "nextqa")
        if letter is None:
            return Score(0.0, parsed=None, failure=f"no option letter in the answer {prediction!r}")
        return Score(1.0 if letter == sample.answer else 0.0, parsed=letter)


class NextQAOpenEnded(Task):
    name = "nextqa_oe"
    metric = "wups@0"
    max_new_tokens = 128
    layout = LAYOUT
    _columns = ("video", "question", "answer", "qid", "type")

    def __init__(self, lexicon: Lexicon | None = None) -> None:
        self._lexicon = lexicon

    @property
    def lexicon(self) -> Lexicon:
        """The WordNet toolkit (NLTK unless one was given); raises naming the install command when missing."""
        if self._lexicon is None:
            self._lexicon = NltkLexicon()
        return self._lexicon

    def check_ready(self) -> None:
        self.lexicon  # noqa: B018 - fails early, before any model is loaded

    def load(self, data_root: Path) -> list[Sample]:
        root = Path(data_root) / "nextqa"
        rows = _read_csv(require_file(root / "oe" / "test.csv", "NExT-OE open-ended annotations", LAYOUT), self._columns)
        # Every answer is scored against both references, as lmms-eval does: the second ones are needed.
        extra_path = require_file(root / "oe" / "add_reference_answer_test.json",
                                  "NExT-OE second reference answers", LAYOUT)
        try:
            extra: dict[str, Any] = json.loads(extra_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{extra_path} is not valid JSON ({err}): download it again") from err
        mapping = _video_map(root)
        samples = []
        for row in rows:
            sample_id = f"{row['video']}_{row['qid']}"
            qtype = "TN" if row["type"] == "TP" else row["type"]
            meta: dict[str, Any] = {"group": qtype}
            if any(row.get(c) is None for c in self._columns) or qtype not in QTYPES or not (row["answer"] or "").strip():
                samples.append(Sample(id=sample_id, task=self.name, question="", meta=meta,
                                      error=f"row {sample_id}: needs an answer and a type among {QTYPES}"))
                continue
            more = extra.get(row["video"], {}) if isinstance(extra, dict) else {}
            meta["extra_answer"] = more.get(row["qid"]) if isinstance(more, dict) else None
            if meta["extra_answer"] is not None and not isinstance(meta["extra_answer"], str):
                samples.append(Sample(id=sample_id, task=self.name, question="", meta=meta, error=(
                    f"row {sample_id}: its second reference answer in {extra_path.name} is "
                    f"{meta['extra_answer']!r}, not text: download that file again")))
                continue
            samples.append(Sample(
                id=sample_id, task=self.name, question=row["question"].strip() + OE_POST_PROMPT, answer=row["answer"],
                video=_video_path(root, row["video"], mapping), meta=meta,
            ))
        return samples

    def score(self, sample: Sample, prediction: str) -> Score:
        if not prediction.strip():
            return Score(0.0, parsed="", failure="empty answer", details={"wups@0.9": 0.0})
        at0, at9, words = nextqa_oe_score(prediction, str(sample.answer), sample.meta["group"],
                                          sample.meta.get("extra_answer"), self.lexicon)
        return Score(at0, parsed=words, details={"wups@0.9": at9})

    def aggregate(self, records: Sequence[Mapping[str, Any]]) -> TaskResult:
        result = super().aggregate(records)
        at9 = [float((r.get("score_details") or {}).get("wups@0.9", 0.0)) for r in records]
        details = dict(result.details)
        details["wups@0.9"] = 100.0 * float(np.mean(at9)) if at9 else 0.0
        return TaskResult(score=result.score, metric=self.metric, details=details)


register_task(NextQAMultipleChoice())
register_task(NextQAOpenEnded())
