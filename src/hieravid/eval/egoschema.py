"""EgoSchema (Mangalam et al., NeurIPS 2023), its public 500-question subset with answers.

Data: the official release (github.com/egoschema/EgoSchema: ``questions.json``, ``subset_answers.json``, and the
videos from its download script, named ``<q_uid>.mp4``). Layout under ``--data-root``::

    egoschema/questions.json        [{"q_uid", "question", "option 0", ..., "option 4", ...}, ...]
    egoschema/subset_answers.json   {"<q_uid>": <index of the right option>, ...}   (500 questions)
    egoschema/videos/<q_uid>.mp4

Only the questions of ``subset_answers.json`` are evaluated (the full set's answers are not public). Prompt and
scoring follow lmms-eval's ``egoschema_subset``: ``question + "\\nA. <option 0>" ... + "\\nAnswer with the option's
letter from the given choices directly."``, 16 new tokens, the option read by MMMU's rule in lmms-eval's EgoSchema
variant (:func:`hieravid.eval.choice.mmmu_option`). lmms-eval guesses at random when no option can be read; here
such an answer scores 0 and counts as failed. The score is the accuracy in percent.
"""

from __future__ import annotations

import json
from pathlib import Path

from hieravid.eval.choice import mmmu_option
from hieravid.eval.tasks import (
    Sample,
    Score,
    Task,
    find_video,
    register_task,
    require_file,
)

__all__ = ["EgoSchema"]

LETTERS = "ABCDE"
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."


class EgoSchema(Task):
    name = "egoschema"
    layout = (
        "<data-root>/egoschema/questions.json, <data-root>/egoschema/subset_answers.json and "
        "<data-root>/egoschema/videos/<q_uid>.mp4 (github.com/egoschema/EgoSchema)"
    )

    def load(self, data_root: Path) -> list[Sample]:
        root = Path(data_root) / "egoschema"
        questions_path = require_file(root / "questions.json", "EgoSchema questions", self.layout)
        answers_path = require_file(root / "subset_answers.json", "EgoSchema subset answers", self.layout)
        questions = _read_json(questions_path)
        answers = _read_json(answers_path)
        if not isinstance(questions, list) or not isinstance(answers, dict):
            raise ValueError(
                f"{questions_path} must hold a JSON list of questions and {answers_path} a JSON object "
                f"q_uid -> answer index. Expected layout: {self.layout}"
            )
        by_uid = {str(q.get("q_uid")): q for q in questions if isinstance(q, dict)}
        return [self._sample(root, str(uid), by_uid.get(str(uid)), answer) for uid, answer in answers.items()]

    def _sample(self, root: Path, uid: str, record: dict | None, answer: object) -> Sample:
        if record is None:
            return Sample(id=uid, task=self.name, question="", error=f"q_uid {uid} of subset_answers.json is not in questions.json")
        keys = ["question"] + [f"option {i}" for i in range(len(LETTERS))]
        if any(k not in record for k in keys):
            return Sample(id=uid, task=self.name, question="", error=f"question {uid} needs the fields {keys}")
        try:
            answer_index = int(answer)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            answer_index = -1
        if not 0 <= answer_index < len(LETTERS):
            return Sample(id=uid, task=self.name, question="", error=f"answer {answer!r} of {uid} is not an option index 0-4")
        options = [f"{LETTERS[i]}. {str(record[f'option {i}']).strip()}" for i in range(len(LETTERS))]
        question = str(record["question"]) + "".join("\n" + option for option in options) + POST_PROMPT
        videos = root / "videos"
        video = find_video([videos / f"{uid}.mp4", videos / f"{uid}.MP4"])
        return Sample(id=uid, task=self.name, question=question, answer=answer_index, options=options, video=str(video))

    def score(self, sample: Sample, prediction: str) -> Score:
        options = dict(zip(LETTERS, sample.options or []))
        letter = mmmu_option(prediction, options, "egoschema")
        if letter not in options:
            return Score(0.0, parsed=None, failure=f"no option letter in the answer {prediction!r}")
        return Score(1.0 if LETTERS.index(letter) == sample.answer else 0.0, parsed=letter)


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): download it again") from err


register_task(EgoSchema())
