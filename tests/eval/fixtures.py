"""Tiny benchmark sets in each benchmark's published file layout, with tiny synthetic videos.

``write_benchmarks(root)`` writes MVBench, EgoSchema, NExT-QA (MC and OE) and Video-MME under ``root`` the way the
official releases lay them out (see each task module of ``hieravid.eval``), including deliberately bad records:
a missing video, a video file that is not a video, a malformed record. ``EXPECTED`` says what each task should
read from them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from hieravid.eval.mvbench import MVBENCH_FOLDERS
from hieravid.video import write_test_video

FRAME_HW = (112, 168)  # the tiny Qwen2-VL's default frame size: its processor keeps it

# task -> (samples read, samples that fail before the model: bad record / missing or broken video)
EXPECTED = {
    "mvbench": (4, 2),
    "egoschema": (3, 1),
    "nextqa_mc": (2, 0),
    "nextqa_oe": (3, 0),
    "videomme": (3, 1),
    "videomme_sub": (3, 1),
}

SRT = """1
00:00:00,000 --> 00:00:00,400
<font color="white" size=".72c">the first line</font>

2
00:00:00,400 --> 00:00:00,800
<font color="white" size=".72c">the second line</font>

3
00:00:05,000 --> 00:00:06,000
<font color="white" size=".72c">never on screen</font>
"""


def _video(path: Path, seed: int, frames: int = 8) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (1, *FRAME_HW, 3))
    steps = np.arange(frames)[:, None, None, None] * rng.integers(1, 20)
    write_test_video(path, ((base + steps) % 256).astype(np.uint8), fps=8)
    return path.name


def _json(path: Path, payload: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))


def write_mvbench(root: Path) -> None:
    base = root / "mvbench"
    _video(base / "video" / "ssv2_video_mp4" / "1001.webm.mp4", 1)
    _video(base / "perception" / "videos" / "p1.mp4", 2)  # lmms-eval's cache layout: no video/ level
    _json(base / "json" / "action_antonym.json", [
        {"video": "1001.webm.mp4", "question": "What is the action performed by the person in the video?",
         "candidates": ["pulling something", "pushing something", "not sure"], "answer": "pushing something"},
        {"video": "missing.mp4", "question": "What happens?", "candidates": ["a", "b"], "answer": "a"},
    ])
    _json(base / "json" / "action_count.json", [
        {"video": "p1.mp4", "question": "How many times?", "candidates": ["1", "2", "3"], "answer": "3"},
        {"video": "p1.mp4", "question": "How many?", "candidates": ["1", "2"], "answer": "4"},  # not a candidate
    ])
    for sub_task in MVBENCH_FOLDERS.keys() - {"action_antonym", "action_count"}:  # every task file is needed
        _json(base / "json" / f"{sub_task}.json", [])


EGO_UIDS = ("0074f737-11cb-497d-8d07-77c3a8127391", "00b9a0de-c59e-49cb-a127-6081e2fb8c8e", "absent-uid")


def write_egoschema(root: Path) -> None:
    base = root / "egoschema"
    questions = []
    for i, uid in enumerate(EGO_UIDS[:2]):
        _video(base / "videos" / f"{uid}.mp4", 10 + i)
        questions.append({"q_uid": uid, "google_drive_id": "x", "question": f"What is c doing overall {i}?",
                          **{f"option {k}": f" option text {k} " for k in range(5)}})
    _json(base / "questions.json", questions)
    _json(base / "subset_answers.json", {EGO_UIDS[0]: 3, EGO_UIDS[1]: 0, EGO_UIDS[2]: 1})  # the last one has no question


def write_nextqa(root: Path) -> None:
    base = root / "nextqa"
    _video(base / "NExTVideo" / "0001" / "2574374895.mp4", 20)
    _video(base / "NExTVideo" / "4010069381.mp4", 21)  # lmms-eval's flat copy, not in the map
    _json(base / "map_vid_vidorID.json", {"2574374895": "0001/2574374895"})
    mc = base / "mc"
    mc.mkdir(parents=True)
    with open(mc / "test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "frame_count", "width", "height", "question", "answer", "qid", "type", "a0", "a1", "a2", "a3", "a4"])
        w.writerow(["2574374895", 8, 168, 112, "what did the baby do after throwing the cup", 2, 8, "TN",
                    "clap proudly", "the lady sitting down", "lay on floor", "just picked it up", "crawl"])
        w.writerow(["4010069381", 8, 168, 112, "where is this place", 1, 1, "DL", "mall", "river", "pool", "room", "hill"])
    oe = base / "oe"
    oe.mkdir(parents=True)
    with open(oe / "test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "frame_count", "width", "height", "question", "answer", "qid", "type"])
        w.writerow(["2574374895", 8, 168, 112, "why does the baby clap", "happy", 0, "CW"])
        w.writerow(["2574374895", 8, 168, 112, "how many people are there", "two", 1, "DC"])
        w.writerow(["4010069381", 8, 168, 112, "what does the man do after", "walk away", 2, "TP"])
    _json(oe / "add_reference_answer_test.json", {"2574374895": {"0": "excited"}})


VIDEOMME_ROWS = [
    {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Astronomy", "url": "u",
     "videoID": "fFjv93ACGo8", "question_id": "001-1", "task_type": "Counting Problem",
     "question": "How many stars are shown?", "options": ["A. 1.", "B. 2.", "C. 3.", "D. 4."], "answer": "C"},
    {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Astronomy", "url": "u",
     "videoID": "fFjv93ACGo8", "question_id": "001-2", "task_type": "OCR Problems",
     "question": "What is written?", "options": ["A. x.", "B. y.", "C. z.", "D. w."], "answer": "A"},
    {"video_id": "002", "duration": "long", "domain": "Sports Competition", "sub_category": "Football", "url": "u",
     "videoID": "broken0000a", "question_id": "002-1", "task_type": "Action Reasoning",
     "question": "Who scores?", "options": ["A. p.", "B. q.", "C. r.", "D. s."], "answer": "B"},
]


def write_videomme(root: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = root / "videomme"
    _video(base / "data" / "fFjv93ACGo8.mp4", 30)
    (base / "data" / "broken0000a.mp4").write_bytes(b"this is not a video file")
    (base / "subtitle").mkdir(parents=True)
    (base / "subtitle" / "fFjv93ACGo8.srt").write_text(SRT)
    (base / "videomme").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(VIDEOMME_ROWS), base / "videomme" / "test-00000-of-00001.parquet")


def write_benchmarks(root: Path) -> Path:
    """Write every fixture set under ``root``; returns ``root``."""
    root = Path(root)
    write_mvbench(root)
    write_egoschema(root)
    write_nextqa(root)
    write_videomme(root)
    return root


class ToyLexicon:
    """A stand-in for WordNet (NLTK's data cannot be downloaded in tests): whitespace tokens, lemmas by a small
    table, and Wu-Palmer similarities from a tiny hand-made taxonomy."""

    LEMMAS = {"walks": "walk", "clapping": "clap", "people": "people", "men": "man"}
    # word -> path from the root of its first synset (depth counts nodes)
    PATHS = {
        "happy": ("entity", "state", "feeling", "happy"),
        "excited": ("entity", "state", "feeling", "excited"),
        "sad": ("entity", "state", "feeling", "sad"),
        "walk": ("entity", "act", "move", "walk"),
        "run": ("entity", "act", "move", "run"),
        "away": ("entity", "direction", "away"),
        "two": ("entity", "number", "two"),
        "three": ("entity", "number", "three"),
    }

    def tokenize(self, text: str) -> list[str]:
        return text.split()

    def lemmas(self, text: str) -> list[str]:
        return [self.LEMMAS.get(w.lower(), w.lower()) for w in text.replace(".", " ").split()]

    def wup(self, word1: str, word2: str) -> float:
        a, b = self.PATHS.get(word1), self.PATHS.get(word2)
        if a is None or b is None:
            return 0.0
        common = 0
        for x, y in zip(a, b):
            if x != y:
                break
            common += 1
        return 2 * common / (len(a) + len(b))
