"""The question types of the synthetic suite, each answered from the :class:`VideoSpec` alone.

Every question is multiple choice with four options in a fixed order per type (chance = 25%), asked as::

    <question>
    A. <option 1>
    B. <option 2>
    C. <option 3>
    D. <option 4>
    answer with the letter .

=================  =============================================  ===========================  ==========================
type               question                                       options                      what it needs
=================  =============================================  ===========================  ==========================
``scene_count``    how many scenes are in the video ?             1 2 3 4                      the scene structure (cuts)
``scene_shape``    which shape is in the first / last scene ?     square circle triangle cross  what was in scene k
``needle``         what color is the brief flash ?                white magenta cyan orange    a 2-frame event (needle)
``direction``      which way does the moving object go ?          left right up down           motion across frames
``count``          how many objects are in the first / last       1 2 3 4                      counting
                   scene ?
=================  =============================================  ===========================  ==========================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hieravid.synthetic.scenes import DIRECTIONS, FLASH_COLORS, SHAPES, VideoSpec

__all__ = ["DESCRIBE_PROMPT", "LETTERS", "QUESTION_TYPES", "Question", "ask", "describe", "format_prompt"]

LETTERS = ("A", "B", "C", "D")
DESCRIBE_PROMPT = "describe the video ."
QUESTION_TYPES = ("scene_count", "scene_shape", "needle", "direction", "count")
_OPTIONS = {
    "scene_count": ("1", "2", "3", "4"),
    "scene_shape": SHAPES,
    "needle": tuple(FLASH_COLORS),
    "direction": DIRECTIONS,
    "count": ("1", "2", "3", "4"),
}


@dataclass(frozen=True)
class Question:
    """A question about one video: its type, text, options, and the correct option's index."""

    qtype: str
    text: str
    options: tuple[str, ...]
    correct: int

    @property
    def answer(self) -> str:
        """The correct option's letter."""
        return LETTERS[self.correct]

    @property
    def answer_text(self) -> str:
        return self.options[self.correct]

    @property
    def prompt(self) -> str:
        return format_prompt(self.text, self.options)


def format_prompt(text: str, options: tuple[str, ...]) -> str:
    """The question with its lettered options, one per line, and the instruction to answer with the letter."""
    lines = [text] + [f"{letter} . {option}" for letter, option in zip(LETTERS, options)]
    return "\n".join(lines + ["answer with the letter ."])


def ask(spec: VideoSpec, qtype: str, rng: np.random.Generator) -> Question:
    """A question of type ``qtype`` about ``spec`` (``rng`` picks the first or the last scene where asked)."""
    if qtype not in _OPTIONS:
        raise ValueError(f"unknown question type {qtype!r}; expected one of {QUESTION_TYPES}")
    options = _OPTIONS[qtype]
    which = str(rng.choice(("first", "last")))
    scene = spec.scenes[0] if which == "first" else spec.scenes[-1]
    if qtype == "scene_count":
        text, value = "how many scenes are in the video ?", str(len(spec.scenes))
    elif qtype == "scene_shape":
        text, value = f"which shape is in the {which} scene ?", scene.shape
    elif qtype == "needle":
        text, value = "what color is the brief flash ?", spec.flash.color
    elif qtype == "direction":
        text, value = "which way does the moving object go ?", spec.mover.direction
    else:
        text, value = f"how many objects are in the {which} scene ?", str(len(scene.objects))
    return Question(qtype=qtype, text=text, options=options, correct=options.index(value))


def describe(spec: VideoSpec) -> str:
    """A caption of everything the questions ask about, in scene order (a training target, never a question)::

        scenes 2 . navy square 3 . gray circle 1 . flash cyan scene 2 . mover left scene 1 .

    Per scene: background, shape, number of objects; then the flash's colour and scene, the mover's direction
    and scene (scenes numbered from 1)."""
    parts = [f"scenes {len(spec.scenes)}"]
    parts += [f"{scene.background} {scene.shape} {len(scene.objects)}" for scene in spec.scenes]
    parts.append(f"flash {spec.flash.color} scene {spec.flash.scene + 1}")
    parts.append(f"mover {spec.mover.direction} scene {spec.mover.scene + 1}")
    return " . ".join(parts) + " ."
