"""Option extraction reproduces lmms-eval's rule of each benchmark (cases that tell the rules apart)."""

from __future__ import annotations

import pytest

from hieravid.eval.choice import (
    mmmu_option,
    mvbench_normalize,
    mvbench_option,
    videomme_option,
)

EGO = {L: f"{L}. option {L.lower()}" for L in "ABCDE"}
NQA = {"A": "clap proudly", "B": "the lady sitting down", "C": "lay on floor", "D": "just picked it up", "E": "crawl"}


@pytest.mark.parametrize(
    "prediction, expected",
    [
        ("B", "B"),
        ("(C) pushing something", "C"),
        ("D. the last one", "D"),
        ("a man pushes it", "A"),  # the article reads as option A, as in lmms-eval
        ("pushing something", None),
        ("", None),
    ],
)
def test_mvbench(prediction, expected):
    assert mvbench_option(prediction) == expected


def test_mvbench_normalizes_ground_truth_letters():
    assert [mvbench_normalize(x) for x in "ABCDE"] == list("ABCDE")


@pytest.mark.parametrize(
    "prediction, expected",
    [
        ("C", "C"),
        ("(B)", "B"),
        ("The answer is (D).", "D"),
        ("A. option a", "A"),
        ("(A) or (C)", "A"),  # several: the candidate whose last occurrence comes first
        ("i think it is option c because", None),  # no letter form, the option text is "C. option c"
        ("nothing here", None),  # lmms-eval guesses at random; here: None
    ],
)
def test_egoschema(prediction, expected):
    assert mmmu_option(prediction, EGO, "egoschema") == expected


@pytest.mark.parametrize(
    "prediction, expected",
    [
        ("E", "E"),
        ("(A) or (C)", "C"),  # several: the last one
        ("A or C", "C"),
        ("the baby would lay on floor after that", "C"),  # long answer: the option's text
        ("lay on floor", None),  # short answer without a letter: lmms-eval guesses
    ],
)
def test_nextqa(prediction, expected):
    assert mmmu_option(prediction, NQA, "nextqa") == expected


@pytest.mark.parametrize(
    "prediction, expected",
    [
        ("C", "C"),
        ("C.", "C"),
        ("The best answer is B", "B"),
        ("(D) four", "D"),
        ("Answer: A", "A"),
        ("Because of this, B.", "B"),
        ("no letter", None),
        ("   ", None),
    ],
)
def test_videomme(prediction, expected):
    assert videomme_option(prediction) == expected
