"""WUPS as NExT-OE / lmms-eval compute it, on a toy lexicon; NLTK is checked for, never downloaded."""

from __future__ import annotations

import pytest
from fixtures import ToyLexicon

from hieravid.eval.wups import NltkLexicon, content_words, nextqa_oe_score, wups

LEX = ToyLexicon()


def test_wups_of_related_words_and_threshold():
    # happy / excited share entity-state-feeling: 2 * 3 / (4 + 4)
    assert wups("happy", "excited", 0.0, LEX) == pytest.approx(0.75)
    assert wups("happy", "excited", 0.9, LEX) == pytest.approx(0.075)  # below the threshold: x 0.1
    assert wups("happy", "happy", 0.9, LEX) == 1.0


def test_wups_takes_the_worse_direction_and_skips_unmatched_words():
    # "walk away" vs "run": walk~run = 0.75, away~run = 2*1/(3+4); from "run": max(0.75, 2/7) = 0.75
    assert wups("walk away", "run", 0.0, LEX) == pytest.approx(min(0.75 * 2 / 7, 0.75))
    assert wups("zzz", "happy", 0.0, LEX) == 0.0  # nothing matched at all


def test_content_words_lemmatize_and_drop_stop_words():
    assert content_words("The man walks away.", LEX) == "man walk away"
    assert content_words("is it the", LEX) == ""


def test_counting_and_yes_no_questions_are_exact_match_with_the_extra_reference():
    assert nextqa_oe_score("two", "two", "DC", None, LEX)[:2] == (1.0, 1.0)
    assert nextqa_oe_score("three", "two", "DC", None, LEX)[:2] == (0.0, 0.0)
    assert nextqa_oe_score("three", "two", "DC", "three", LEX)[:2] == (1.0, 1.0)


def test_other_questions_take_the_better_reference():
    at0, at9, words = nextqa_oe_score("she is excited", "sad", "CW", "happy", LEX)
    assert words == "excited"
    assert at0 == pytest.approx(0.75) and at9 == pytest.approx(0.075)


def test_nltk_lexicon_names_the_install_command_when_data_is_missing():
    try:
        NltkLexicon()
    except RuntimeError as err:
        assert "nltk.downloader wordnet punkt_tab averaged_perceptron_tagger_eng" in str(err)
    else:
        pytest.skip("NLTK and its WordNet data are installed here")
