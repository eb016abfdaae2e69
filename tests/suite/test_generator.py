"""The synthetic video-QA generator: deterministic, well-formed, and answers that follow from the description."""

from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hieravid.synthetic import LETTERS, QUESTION_TYPES, generate_sample, split_samples
from hieravid.synthetic.questions import ask
from hieravid.synthetic.render import object_position, render, shape_mask
from hieravid.synthetic.scenes import (
    BACKGROUNDS,
    FLASH_COLORS,
    FLASH_FRAMES,
    MIN_SCENE_FRAMES,
    NUM_FRAMES,
    OBJECT_COLORS,
    OBJECT_SIZE,
)

indices = st.integers(min_value=0, max_value=10**6)
splits = st.sampled_from(["train", "validation", "test"])


def test_same_index_same_sample():
    a, b = generate_sample(17, "test"), generate_sample(17, "test")
    assert a.spec == b.spec and a.question == b.question and a.answer == b.answer
    assert np.array_equal(a.frames, b.frames)


def test_splits_are_different_streams():
    specs = {split: [generate_sample(i, split).spec for i in range(20)] for split in ("train", "validation", "test")}
    assert specs["train"] != specs["test"] and specs["validation"] != specs["test"]


def test_bad_split_and_index_are_refused():
    with pytest.raises(ValueError, match="split"):
        generate_sample(0, "dev")
    with pytest.raises(ValueError, match=">= 0"):
        generate_sample(-1)
    with pytest.raises(ValueError, match="question type"):
        generate_sample(0, qtype="colour")


@given(indices, splits)
def test_scene_structure(index, split):
    spec = generate_sample(index, split).spec
    assert spec.scenes[0].start == 0 and spec.scenes[-1].end == NUM_FRAMES
    for before, after in zip(spec.scenes, spec.scenes[1:]):
        assert before.end == after.start  # contiguous: hard cuts
        assert before.background != after.background  # a cut is visible
    for scene in spec.scenes:
        assert scene.length >= MIN_SCENE_FRAMES and scene.start % 2 == 0
        assert 1 <= len(scene.objects) <= 4
    assert 1 <= len(spec.scenes) <= 4


@given(indices, splits)
def test_objects_stay_in_frame_and_only_the_mover_moves(index, split):
    spec = generate_sample(index, split).spec
    for k, scene in enumerate(spec.scenes):
        for i, obj in enumerate(scene.objects):
            first = object_position(spec, k, i, scene.start)
            last = object_position(spec, k, i, scene.end - 1)
            for x, y in (first, last):
                assert 0 <= x <= spec.size - OBJECT_SIZE and 0 <= y <= spec.size - OBJECT_SIZE
            moved = (last[0] - first[0], last[1] - first[1])
            if (k, i) == (spec.mover.scene, spec.mover.index):
                expected = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[spec.mover.direction]
                assert np.sign(moved).tolist() == list(expected)
                assert abs(sum(moved)) >= 30  # a clearly visible motion
            else:
                assert moved == (0, 0)


@given(indices, splits)
def test_the_flash_is_brief_and_inside_one_scene(index, split):
    spec = generate_sample(index, split).spec
    flash = spec.flash
    scene = spec.scenes[flash.scene]
    assert scene.start <= flash.start and flash.start + FLASH_FRAMES <= scene.end


def _answer_from_description(spec, qtype, text):
    """The answer worked out from the scene description alone, independently of questions.ask."""
    scene = spec.scenes[-1] if "last" in text else spec.scenes[0]
    if qtype == "scene_count":
        backgrounds = [spec.scenes[spec.scene_at(t)].background for t in range(spec.num_frames)]
        return str(1 + sum(a != b for a, b in zip(backgrounds, backgrounds[1:])))
    if qtype == "scene_shape":
        return scene.shape
    if qtype == "needle":
        return spec.flash.color
    if qtype == "direction":
        return spec.mover.direction
    return str(len(scene.objects))


@given(indices, splits)
def test_answers_follow_from_the_description(index, split):
    sample = generate_sample(index, split)
    expected = _answer_from_description(sample.spec, sample.qtype, sample.question.splitlines()[0])
    assert sample.answer_text == expected
    assert sample.options[LETTERS.index(sample.answer)] == expected
    lines = sample.question.splitlines()
    assert lines[1 + LETTERS.index(sample.answer)].endswith(f". {expected}")


def test_every_question_type_on_one_video():
    sample = generate_sample(5, "test")
    for qtype in QUESTION_TYPES:
        question = ask(sample.spec, qtype, np.random.default_rng(0))
        assert question.answer_text == _answer_from_description(sample.spec, qtype, question.text)


def test_splits_are_balanced_over_types_and_answers():
    samples = split_samples("test", 500)
    assert Counter(s.qtype for s in samples) == {t: 100 for t in QUESTION_TYPES}
    for qtype in QUESTION_TYPES:
        letters = Counter(s.answer for s in samples if s.qtype == qtype)
        assert all(letters[letter] >= 10 for letter in LETTERS), (qtype, letters)


@given(indices)
def test_pixels_show_the_description(index):
    """The render draws what the description says: backgrounds per scene, the flash only in its frames."""
    spec = generate_sample(index, "test").spec
    frames = render(spec)
    assert frames.shape == (NUM_FRAMES, spec.size, spec.size, 3) and frames.dtype == np.uint8
    flash_rgb = np.array(FLASH_COLORS[spec.flash.color])
    has_flash = (frames == flash_rgb).all(-1).any((1, 2))
    flash_frames = set(range(spec.flash.start, spec.flash.start + FLASH_FRAMES))
    assert set(np.flatnonzero(has_flash).tolist()) == flash_frames
    for scene in spec.scenes:
        corner_free = frames[scene.start, 0, 0]  # objects start at >= 2 pixels from the border
        assert tuple(corner_free) == BACKGROUNDS[scene.background]
        for i, obj in enumerate(scene.objects):
            if (spec.scenes.index(scene), i) == (spec.mover.scene, spec.mover.index):
                continue
            x, y = obj.x, obj.y
            mask = shape_mask(scene.shape)
            patches = frames[scene.start : scene.end, y : y + OBJECT_SIZE, x : x + OBJECT_SIZE][:, mask]
            # the object's colour, in the frames where the mover or the flash does not pass over it
            visible = (patches == np.array(OBJECT_COLORS[obj.color])).all(-1).mean(-1)  # (frames,)
            assert visible.max() > 0.6


def test_the_package_docstring_example_is_true():
    import re

    import hieravid.synthetic as synthetic

    sample = generate_sample(7, split="test")
    shape = re.search(r"sample\.frames\s+# \((\d+), (\d+), (\d+), 3\)", synthetic.__doc__)
    assert sample.frames.shape == (*map(int, shape.groups()), 3)
    assert sample.answer == re.search(r'sample\.answer\s+# "(\w)"', synthetic.__doc__).group(1)
