"""Reading the chosen option out of a model's free-form answer, the way lmms-eval scores each benchmark.

lmms-eval uses a different extraction rule per benchmark, and the published numbers depend on it, so each rule
is reproduced here on its own (same candidate patterns, same priorities, same tie-breaks):

- :func:`mvbench_option` (MVBench's ``mcq_acc``): a leading ``"X."``, else the first standalone letter A-E after
  VQA-style punctuation clean-up.
- :func:`mmmu_option` (EgoSchema and NExT-QA multiple choice; MMMU's rule with each benchmark's variant):
  ``(X)``, ``"X "``, ``"X."`` candidates, or the option's text inside a long answer.
- :func:`videomme_option` (VideoMME; lmms-eval's ``extract_mcq_answer``): ten answer formats ranked by priority.

Where lmms-eval guesses an option at random because nothing could be read (EgoSchema, NExT-QA), these functions
return None and the sample is scored 0 and counted as failed instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal

__all__ = ["mmmu_option", "mvbench_option", "videomme_option"]

# ------------------------------------------------------------------------------------------------- MVBench

_MVBENCH_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# A period not followed by a digit. lmms-eval passes re.UNICODE (= 32) as the `count` argument of sub(), so at
# most 32 periods are removed; kept for identical results.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_PERIOD_COUNT = 32
_LEADING_OPTION = re.compile(r"^([A-E])\.\s*(.+)$", re.IGNORECASE)
_STANDALONE_LETTER = re.compile(r"\b([A-E])\b", re.IGNORECASE)


def _mvbench_punctuation(text: str) -> str:
    out = text
    has_number_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in _MVBENCH_PUNCT:
        # the test reads the original text, the replacement accumulates on the output (as in lmms-eval)
        if p + " " in text or " " + p in text or has_number_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def mvbench_normalize(text: str) -> str:
    """MVBench's normalisation of an answer (prediction or ground-truth letter): the option letter in upper case
    when one is found, else the cleaned lower-case text."""
    match = _LEADING_OPTION.match(text.strip())
    if match:
        return match.group(1).upper()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = _mvbench_punctuation(text)
    text = text.strip("'").strip('"').strip(")").strip("(").strip().lower()
    letter = _STANDALONE_LETTER.search(text)
    return letter.group(1).upper() if letter else text


def mvbench_option(prediction: str) -> str | None:
    """The option letter (A-E) MVBench reads from ``prediction``, or None when it reads none."""
    normalized = mvbench_normalize(prediction)
    return normalized if len(normalized) == 1 and normalized in "ABCDE" else None


# ---------------------------------------------------------------------------------- EgoSchema / NExT-QA MC


def mmmu_option(
    prediction: str,
    options: Mapping[str, str],
    variant: Literal["egoschema", "nextqa"],
) -> str | None:
    """The option letter read from ``prediction`` by lmms-eval's MMMU-style rule, or None (lmms-eval: random).

    Args:
        prediction: the generated text.
        options: letter -> option text as lmms-eval holds it (``"A" -> "A. walks away"`` for EgoSchema, whose
            options carry their letter; ``"A" -> "walks away"`` for NExT-QA).
        variant: ``"egoschema"`` collects ``(X)``, ``"X "`` and ``"X."`` candidates together and, among several,
            takes the one whose last occurrence comes FIRST; ``"nextqa"`` tries the three forms in turn (the first
            form that matches wins) and takes the candidate whose last occurrence comes LAST.
    """
    letters = list(options)
    response = prediction
    for char in (",", ".", "!", "?", ";", ":", "'"):
        response = response.strip(char)
    response = f" {response} "
    content_match = False  # candidates found by option text rather than by letter
    bracketed = False
    candidates: list[str] = []  # the matched pattern, e.g. "(B)" or "B " (egoschema) / the letter (nextqa)

    patterns = ("({})", "{} ", "{}.")
    for pattern in patterns:
        if variant == "nextqa" and candidates:
            break
        for letter in letters:
            if pattern.format(letter) in response:
                candidates.append(pattern.format(letter) if variant == "egoschema" else letter)
                bracketed = bracketed or pattern == "({})"
    if not candidates and len(response.split()) > 5:
        for letter, text in options.items():
            if text.lower() in response.lower():
                candidates.append(letter)
                content_match = True
    if not candidates:
        return None
    if len(candidates) > 1:
        if content_match:
            positions = [response.lower().rfind(options[c].lower()) for c in candidates]
        elif variant == "egoschema":
            positions = [response.rfind(c) for c in candidates]
        elif bracketed:
            positions = [response.rfind(f"({c})") for c in candidates]
        else:
            positions = [response.rfind(f" {c} ") for c in candidates]
        # ties go to the earlier candidate in both variants (numpy argmin / argmax)
        target = min(positions) if variant == "egoschema" else max(positions)
        chosen = candidates[positions.index(target)]
    else:
        chosen = candidates[0]
    return chosen.replace("(", "").replace(")", "").replace(".", "").strip()


# ------------------------------------------------------------------------------------------------ VideoMME

_ANSWER_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
    "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
    "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select", "i pick",
    "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは",
)  # fmt: skip
# format -> priority; higher wins, then the later position
_PRIORITY = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3, "space": 2}
_FALLBACK_PRIORITY = 0


def videomme_option(prediction: str, choices: Sequence[str] = ("A", "B", "C", "D")) -> str | None:
    """The option letter lmms-eval's ``extract_mcq_answer`` reads from ``prediction``, or None ("" there)."""
    if not prediction or not prediction.strip():
        return None
    text = prediction.strip()
    for char in (",", ".", "!", "?", ";", ":", "'", '"'):
        text = text.strip(char)
    text = f" {text} "
    found: list[tuple[int, int, str]] = []  # (priority, position, letter)
    forms = (("parentheses", "({})"), ("period", "{}."), ("colon", "{}:"), ("right_paren", "{})"), ("space", "{} "))
    for form, pattern in forms:
        for letter in choices:
            needle = pattern.format(letter)
            if needle in text:
                found.append((_PRIORITY[form], text.rfind(needle), letter))
    lower = text.lower()
    for phrase in _ANSWER_PHRASES:
        at = lower.find(phrase)
        if at != -1:
            after = at + len(phrase)
            for letter in choices:
                position = text.find(letter, after)
                if position != -1:
                    found.append((_PRIORITY["phrase"], position, letter))
    stripped = text.strip()
    for letter in choices:
        if stripped.startswith(letter) and (len(stripped) == 1 or not stripped[1].isalpha()):
            found.append((_PRIORITY["start"], 0, letter))
    for letter in choices:
        if stripped.endswith(letter) and (len(stripped) == 1 or not stripped[-2].isalpha()):
            found.append((_PRIORITY["end"], len(text) - 1, letter))
    if not found:
        for letter in choices:
            if letter in text:
                found.append((_FALLBACK_PRIORITY, text.rfind(letter), letter))
    if not found:
        return None
    # highest priority, then latest position; a stable sort keeps the first-found among full ties (as lmms-eval)
    found.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return found[0][2]
