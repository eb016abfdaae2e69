"""Benchmark tasks: what a sample is, how a task reads, prompts and scores it, and the registry of tasks.

A task is a :class:`Task` subclass registered under a name with :func:`register_task`. The runner
(:mod:`hieravid.eval.runner`) is generic over tasks: it asks a task for its samples (:meth:`Task.load`), for the
prompt of a sample once its video is decoded (:meth:`Task.prompt`), for the score of a prediction
(:meth:`Task.score`, given the generated text cut at the task's first stop string, :attr:`Task.until`) and for
the task's summary score (:meth:`Task.aggregate`).

Built-in tasks live in their own modules and are imported the first time their name is asked for
(:data:`_MODULES`); a module elsewhere registers more with :func:`register_task` when it is imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PAPER_TASKS",
    "SUITES",
    "Sample",
    "Score",
    "Task",
    "TaskResult",
    "available_tasks",
    "cut_at_stop",
    "get_task",
    "register_task",
    "suite_tasks",
]

# Where each task that ships with hieravid (or is expected to) is defined; imported on first use.
_MODULES = {
    "mvbench": "hieravid.eval.mvbench",
    "egoschema": "hieravid.eval.egoschema",
    "nextqa_mc": "hieravid.eval.nextqa",
    "nextqa_oe": "hieravid.eval.nextqa",
    "videomme": "hieravid.eval.videomme",
    "videomme_sub": "hieravid.eval.videomme",
    "synthetic": "hieravid.eval.synthetic",
}

PAPER_TASKS = ("mvbench", "egoschema", "nextqa_mc", "nextqa_oe", "videomme", "videomme_sub")
SUITES: dict[str, tuple[str, ...]] = {"paper": PAPER_TASKS, "synthetic": ("synthetic",)}

# lmms-eval's stop strings for a generate_until task whose yaml sets no ``until`` (its TaskConfig default, the
# few-shot delimiter); none of the paper's tasks sets one.
LMMS_EVAL_UNTIL = ("\n\n",)

_REGISTRY: dict[str, Task] = {}


@dataclass
class Sample:
    """One question about one video.

    Attributes:
        id: unique within its task (the benchmark's own question id where it has one).
        task: the task's name.
        question: the text given to the model (the task's full prompt; tasks whose prompt depends on the
            decoded video, such as VideoMME with subtitles, build it in :meth:`Task.prompt`).
        answer: the ground truth in the task's own form (an option letter, an option index, a phrase).
        options: the multiple-choice options as shown to the model, or None for open-ended questions.
        video: path of the video file, or None when ``frames`` gives the frames.
        frames: ``frames(num_frames) -> (T, H, W, 3) uint8`` for tasks that make their frames (synthetic data).
        meta: anything else the task needs to prompt or score (question type, duration, sub-task...).
        error: why this sample cannot run (a malformed record); the runner records it as failed.
    """

    id: str
    task: str
    question: str
    answer: Any = None
    options: list[str] | None = None
    video: str | None = None
    frames: Callable[[int], np.ndarray] | None = field(default=None, repr=False)
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass(frozen=True)
class Score:
    """The score of one prediction.

    Attributes:
        value: the sample's score in [0, 1] (1 = correct; WUPS is fractional).
        parsed: what was read out of the prediction (an option letter, the lemmatized phrase), for the record.
        failure: why the prediction could not be parsed (no option letter found...); the sample then counts as
            failed, with ``value`` 0.
        details: extra per-sample numbers the task aggregates (e.g. WUPS@0.9).
    """

    value: float
    parsed: str | None = None
    failure: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskResult:
    """A task's summary for one method at one budget.

    Attributes:
        score: the task's headline number in percent (accuracy, or WUPS@0 x 100).
        metric: what ``score`` is ("accuracy", "wups@0").
        details: breakdowns (per sub-task, per duration, WUPS@0.9...), in percent.
    """

    score: float
    metric: str
    details: dict[str, Any] = field(default_factory=dict)


class Task:
    """Base class of a benchmark task. Subclasses set ``name``, ``metric`` and implement :meth:`load` and
    :meth:`score`; :meth:`prompt` and :meth:`aggregate` have defaults."""

    name: str = ""
    metric: str = "accuracy"
    #: tokens to generate per answer (lmms-eval's ``max_new_tokens`` where the task's yaml sets one).
    max_new_tokens: int = 16
    #: stop strings: the generated text is scored up to the first of them (lmms-eval's ``until``; its
    #: default ``"\n\n"`` where the task's yaml sets none). ``()`` scores the whole text.
    until: tuple[str, ...] = LMMS_EVAL_UNTIL
    #: keys of ``Sample.meta`` naming files the prompt is built from (a missing one asks another question).
    prompt_files: tuple[str, ...] = ()
    #: where to get the data and how to lay it out under ``--data-root`` (shown in errors and the docs).
    layout: str = ""

    def load(self, data_root: Path) -> list[Sample]:
        """Read the benchmark's files under ``data_root`` and return its samples.

        Raises:
            FileNotFoundError / ValueError: the annotation files are missing or unreadable as a whole (the
                runner records the task as failed and goes on); a single bad record becomes a sample with
                ``error`` set instead.
        """
        raise NotImplementedError

    def prompt(self, sample: Sample, video: Any | None) -> str:
        """The text to ask about ``sample`` once its video is decoded (``video`` is a
        :class:`hieravid.video.SampledVideo`, or None for tasks that make their own frames)."""
        return sample.question

    def score(self, sample: Sample, prediction: str) -> Score:
        """Score the model's answer for ``sample`` (the generated text cut at :attr:`until`)."""
        raise NotImplementedError

    def aggregate(self, records: Sequence[Mapping[str, Any]]) -> TaskResult:
        """The task's score over ``records`` (the JSONL records of one method at one budget).

        Every record counts: a failed sample scores 0. Records whose ``meta`` has a ``group`` are also
        averaged per group (``details["groups"]``)."""
        values = [float(r.get("score") or 0.0) for r in records]
        groups: dict[str, list[float]] = {}
        for record, value in zip(records, values):
            group = (record.get("meta") or {}).get("group")
            if group is not None:
                groups.setdefault(str(group), []).append(value)
        details: dict[str, Any] = {}
        if groups:
            details["groups"] = {name: 100.0 * float(np.mean(v)) for name, v in sorted(groups.items())}
        return TaskResult(score=100.0 * float(np.mean(values)) if values else 0.0, metric=self.metric, details=details)

    def check_ready(self) -> None:
        """Raise an error naming the fix when something the task needs at scoring time is missing (checked
        before any model is loaded). The default needs nothing."""


def cut_at_stop(text: str, until: str | Sequence[str] | None) -> str:
    """``text`` up to the earliest occurrence of any stop string in ``until`` (a string, a list, or None for
    none): lmms-eval's ``until`` applied as its Qwen2-VL model applies it before the answer is scored."""
    stops = [until] if isinstance(until, str) else list(until or [])
    found = [text.find(stop) for stop in stops if stop and stop in text]
    return text[: min(found)] if found else text


def register_task(task: Task, *, replace: bool = False) -> Task:
    """Make ``task`` available under ``task.name`` (to ``hieravid eval --tasks`` and :func:`get_task`)."""
    if not task.name:
        raise ValueError(f"{type(task).__name__} has no name: set the class attribute `name`")
    if task.name in _REGISTRY and not replace and type(_REGISTRY[task.name]) is not type(task):
        raise ValueError(f"a task named {task.name!r} is already registered: pass replace=True to replace it")
    _REGISTRY[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The task registered as ``name``, importing its module first if it ships with hieravid."""
    if name not in _REGISTRY and name in _MODULES:
        module = _MODULES[name]
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
            raise ValueError(f"task {name!r} is not available in this version: its module {module} is missing") from err
    if name not in _REGISTRY:
        known = sorted(set(_REGISTRY) | set(_MODULES))
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(known)}")
    return _REGISTRY[name]


def available_tasks() -> list[str]:
    """Names of the tasks hieravid knows (built in or registered)."""
    return sorted(set(_REGISTRY) | set(_MODULES))


def suite_tasks(suite: str) -> list[str]:
    """The task names of a suite (``paper``: the six benchmarks of the paper; ``synthetic``)."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; known suites: {', '.join(sorted(SUITES))}")
    return list(SUITES[suite])


def require_file(path: Path, what: str, layout: str) -> Path:
    """``path`` if it is a file, else a FileNotFoundError naming what is missing and the expected layout."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found at {path}. Expected layout: {layout}")
    return path


def find_video(candidates: Sequence[Path]) -> Path:
    """The first existing file among ``candidates`` (ordered guesses of a video's place and extension); if none
    exists, the first one (the runner then records a clear 'no video file' failure)."""
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return candidates[0]
