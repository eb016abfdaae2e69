"""The synthetic suite as an evaluation task (``hieravid eval --suite synthetic``).

Samples are the first ``size`` questions of the synthetic test split (:mod:`hieravid.synthetic`), 100 of each
question type by default; their frames are rendered in memory (32 frames, 96 x 96), no files are needed and
``--data-root`` is ignored. The answer is the option letter read from the generated text (VideoMME's rule:
``extract_mcq_answer``) of the whole generated text (no stop string: the suite is hieravid's own, not an
lmms-eval task); the score is accuracy in percent, also per question type (``details["groups"]``).
With the shipped proxy model (the default ``--model`` for this suite) it is an accuracy signal measured on a
small trained model, not a benchmark of real VideoLLMs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hieravid.eval.choice import videomme_option
from hieravid.eval.tasks import Sample, Score, Task, register_task
from hieravid.synthetic import LETTERS, QUESTION_TYPES, generate_sample
from hieravid.video import check_frames_memory, sample_indices

__all__ = ["SyntheticTask"]


class SyntheticTask(Task):
    name = "synthetic"
    layout = "nothing: the videos are rendered in memory from their seeds (hieravid.synthetic)"
    max_new_tokens = 4
    until = ()  # the whole answer is read

    def __init__(self, size: int = 100 * len(QUESTION_TYPES)) -> None:
        self.size = size

    def load(self, data_root: Path) -> list[Sample]:
        return [self._sample(i) for i in range(self.size)]

    def _sample(self, index: int) -> Sample:
        sample = generate_sample(index, "test")

        def frames(num_frames: int) -> np.ndarray:
            video = generate_sample(index, "test").frames  # (32, 96, 96, 3), rendered now: no pixels are held
            check_frames_memory(num_frames, len(video), *video.shape[1:3])  # as a video file's, before indexing
            return video[sample_indices(len(video), num_frames)]

        return Sample(
            id=sample.id,
            task=self.name,
            question=sample.question,
            answer=sample.answer,
            options=sample.options,
            frames=frames,
            meta={"group": sample.qtype},
        )

    def score(self, sample: Sample, prediction: str) -> Score:
        letter = videomme_option(prediction, LETTERS)
        if letter is None:
            return Score(0.0, failure=f"no option letter A-D in {prediction!r}")
        return Score(float(letter == sample.answer), parsed=letter)


register_task(SyntheticTask())
