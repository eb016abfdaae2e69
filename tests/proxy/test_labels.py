"""The proxy's per-token training labels agree with the pixels the processor hands the vision tower."""

import numpy as np
import pytest
import torch

from hieravid.proxy.build import build_processor
from hieravid.proxy.labels import HEADS, SUMMARY, token_labels, video_summary
from hieravid.proxy.train import batch_inputs
from hieravid.synthetic import generate_sample
from hieravid.synthetic.scenes import BACKGROUNDS, DIRECTIONS, FLASH_COLORS, SHAPES


@pytest.fixture(scope="module")
def processor():
    return build_processor()


def _token_pixels(processor, sample, frame: int = 0) -> np.ndarray:
    """``(576, 16 * 16, 3)`` RGB in [0, 1] of the first (``frame`` 0) or second frame of each visual token, in
    the tower's order."""
    pixels = batch_inputs(processor, [sample])["pixel_values_videos"]  # (2304, C * 2 * 8 * 8)
    video = processor.video_processor
    mean = torch.tensor(video.image_mean).view(1, 1, 3, 1, 1, 1)
    std = torch.tensor(video.image_std).view(1, 1, 3, 1, 1, 1)
    x = pixels.view(-1, 4, 3, 2, 8, 8) * std + mean  # (tokens, 2 x 2 patches, C, frames, 8, 8)
    return x[:, :, :, frame].permute(0, 1, 3, 4, 2).reshape(x.shape[0], -1, 3).numpy()


def _near(pixels: np.ndarray, rgb) -> np.ndarray:
    return np.abs(pixels - np.asarray(rgb) / 255).max(-1) < 0.05


@pytest.mark.parametrize("index", range(6))
def test_labels_match_the_pixels(processor, index):
    sample = generate_sample(index, "train")
    labels = token_labels(sample.spec)
    assert labels.shape == (16, 6, 6, len(HEADS))
    flat = labels.reshape(-1, len(HEADS))
    pixels = _token_pixels(processor, sample)
    # Background: most of the token's pixels where no object's centre lies.
    backgrounds = list(BACKGROUNDS.values())
    empty = flat[:, 1] == 0
    share = np.stack([_near(pixels[empty], c).mean(1) for c in backgrounds], 1)  # (tokens, backgrounds)
    assert (share.argmax(1) == flat[empty, 0]).mean() > 0.95
    # Flash: exactly one token, showing the flash colour more than any token of the other colours.
    (hit,) = np.nonzero(flat[:, 2])
    assert hit.size == 1
    color = list(FLASH_COLORS.values())[flat[hit[0], 2] - 1]
    assert _near(pixels[hit[0]], color).mean() > 0.4
    # Objects: one centre per object at every time step of a scene.
    for step in range(16):
        scene = sample.spec.scenes[sample.spec.scene_at(2 * step)]
        assert 1 <= (labels[step, :, :, 1] > 0).sum() <= len(scene.objects)
    # Mover: the tokens whose two frames differ, in the steps of its scene, labelled with its direction.
    changed = np.abs(pixels - _token_pixels(processor, sample, frame=1)).max(axis=(1, 2)) > 0.05  # (tokens,)
    moving = flat[:, 3] > 0
    assert changed.any() and not (changed & ~moving).any()
    # Not every labelled token changes: where the mover crosses an object of its own colour, its outline moves
    # over pixels that keep their colour.
    assert changed[moving].mean() > 0.5
    in_scene = np.repeat([sample.spec.scene_at(2 * step) == sample.spec.mover.scene for step in range(16)], 36)
    assert not (moving & ~in_scene).any()
    assert set(flat[moving, 3].tolist()) == {1 + DIRECTIONS.index(sample.spec.mover.direction)}


@pytest.mark.parametrize("index", range(20))
def test_summary_facts_answer_the_questions(index):
    sample = generate_sample(index, "train")
    spec = sample.spec
    facts = dict(zip(SUMMARY, video_summary(spec).tolist()))
    assert all(0 <= facts[name] < n for name, n in SUMMARY.items())
    assert facts["scene_count"] + 1 == len(spec.scenes)
    assert SHAPES[facts["first_shape"]] == spec.scenes[0].shape and SHAPES[facts["last_shape"]] == spec.scenes[-1].shape
    assert facts["first_count"] + 1 == len(spec.scenes[0].objects)
    assert facts["last_count"] + 1 == len(spec.scenes[-1].objects)
    assert DIRECTIONS[facts["direction"]] == spec.mover.direction
    assert list(FLASH_COLORS)[facts["flash"]] == spec.flash.color
    # The facts answer every question type (each type's options are in its fact's class order).
    from hieravid.synthetic.questions import QUESTION_TYPES, ask

    rng = np.random.default_rng(index)
    for qtype in QUESTION_TYPES:
        q = ask(spec, qtype, rng)
        if qtype == "scene_shape" or qtype == "count":
            which = "first" if "first" in q.text else "last"
            fact = f"{which}_{'shape' if qtype == 'scene_shape' else 'count'}"
        else:
            fact = {"scene_count": "scene_count", "needle": "flash", "direction": "direction"}[qtype]
        assert q.correct == facts[fact], (qtype, q.text)
