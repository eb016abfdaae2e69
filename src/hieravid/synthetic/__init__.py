"""A synthetic video-QA suite: procedurally rendered videos with multiple-choice questions, deterministic by seed.

It is the accuracy proxy that runs anywhere: :mod:`hieravid.proxy` ships a small Qwen2-VL trained on it, and
``hieravid eval --suite synthetic`` measures every pruning method on its test split through the same code path as
real models. :mod:`~hieravid.synthetic.scenes` describes what a video shows, :mod:`~hieravid.synthetic.render`
draws it, :mod:`~hieravid.synthetic.questions` lists the question types.

    sample = generate_sample(7, split="test")
    sample.frames          # (32, 96, 96, 3) uint8
    sample.question        # the full multiple-choice prompt
    sample.answer          # "D"
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from hieravid.synthetic.questions import LETTERS, QUESTION_TYPES, Question, ask, format_prompt
from hieravid.synthetic.render import render
from hieravid.synthetic.scenes import VideoSpec, sample_spec

__all__ = [
    "FPS",
    "LETTERS",
    "QUESTION_TYPES",
    "SPLITS",
    "SyntheticSample",
    "format_prompt",
    "generate_sample",
    "split_samples",
]

SPLITS = {"train": 0, "validation": 1, "test": 2}
FPS = 4.0  # frames per second the videos are written at: 32 frames = 8 s


@dataclass(frozen=True)
class SyntheticSample:
    """One video and one question about it. The pixels are rendered on first use of ``frames``."""

    split: str
    index: int
    spec: VideoSpec
    question_: Question

    @functools.cached_property
    def frames(self) -> np.ndarray:
        """``(T, H, W, 3)`` uint8 frames of :attr:`spec`."""
        return render(self.spec)

    @property
    def id(self) -> str:
        return f"{self.split}-{self.index}"

    @property
    def qtype(self) -> str:
        return self.question_.qtype

    @property
    def question(self) -> str:
        """The full multiple-choice prompt."""
        return self.question_.prompt

    @property
    def options(self) -> list[str]:
        return list(self.question_.options)

    @property
    def answer(self) -> str:
        """The correct letter."""
        return self.question_.answer

    @property
    def answer_text(self) -> str:
        return self.question_.answer_text

    @property
    def fps(self) -> float:
        return FPS


def _rng(split: str, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLITS)}")
    if index < 0:
        raise ValueError(f"sample index must be >= 0, got {index}")
    return np.random.default_rng(np.random.SeedSequence([SPLITS[split], index]))


def generate_sample(index: int, split: str = "test", qtype: str | None = None) -> SyntheticSample:
    """Sample ``index`` of ``split``: the same video and question every time.

    The question type cycles through :data:`QUESTION_TYPES` with the index (balanced splits) unless ``qtype``
    forces one. Splits use disjoint random streams.
    """
    rng = _rng(split, index)
    spec = sample_spec(rng)
    kind = qtype if qtype is not None else QUESTION_TYPES[index % len(QUESTION_TYPES)]
    question = ask(spec, kind, rng)
    return SyntheticSample(split=split, index=index, spec=spec, question_=question)


def split_samples(split: str, size: int, start: int = 0) -> list[SyntheticSample]:
    """Samples ``start .. start + size - 1`` of ``split``."""
    return [generate_sample(i, split) for i in range(start, start + size)]
