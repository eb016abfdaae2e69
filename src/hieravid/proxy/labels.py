"""What each visual token of a synthetic video shows, from its :class:`~hieravid.synthetic.scenes.VideoSpec`.

Training-only targets for the proxy's auxiliary heads (:mod:`hieravid.proxy.train`): a linear probe on each
visual token, as it leaves the vision tower, learns to name what the token covers. Without them the vision
tower learns shapes only through the answer letters, a signal too weak for a model this small (see the card).

A visual token of the proxy covers 2 frames (``temporal_patch_size``) x 16 x 16 pixels (8-pixel patches merged
2 x 2), so a 32-frame 96 x 96 video has a ``(16, 6, 6)`` grid of tokens, in the order the vision tower emits
them (time, row, column). Labels are taken at the first frame of each token's pair:

=============  =====================================================================================
head           classes
=============  =====================================================================================
``background`` the scene's background colour (5)
``object``     0 = no object's centre in the token, else 1 + the shape of the object centred there
``flash``      0 = no flash centre, else 1 + the flash colour
``mover``      0 = the mover's outline does not change inside the token between its two frames, else 1 + its
               direction (where its motion can show, unlike the centre of a 24-pixel object; from the mover's
               own outline, so a token where an object drawn over the mover hides the change is labelled too)
=============  =====================================================================================
"""

from __future__ import annotations

import numpy as np

from hieravid.synthetic.render import object_position, shape_mask
from hieravid.synthetic.scenes import BACKGROUNDS, DIRECTIONS, FLASH_COLORS, FLASH_FRAMES, OBJECT_SIZE, SHAPES, VideoSpec

__all__ = ["HEADS", "SUMMARY", "TOKEN_PIXELS", "token_labels", "video_summary"]

TOKEN_PIXELS = 16  # side of the square a visual token covers
TOKEN_FRAMES = 2  # frames a visual token covers
HEADS = {
    "background": len(BACKGROUNDS),
    "object": 1 + len(SHAPES),
    "flash": 1 + len(FLASH_COLORS),
    "mover": 1 + len(DIRECTIONS),
}
# What the whole video shows, the answers' facts: targets of the summary heads on the <|vision_end|> token.
SUMMARY = {
    "scene_count": 4,
    "first_shape": len(SHAPES),
    "last_shape": len(SHAPES),
    "first_count": 4,
    "last_count": 4,
    "direction": len(DIRECTIONS),
    "flash": len(FLASH_COLORS),
}


def token_labels(spec: VideoSpec) -> np.ndarray:
    """``(T / 2, S / 16, S / 16, 4)`` int64 labels of every visual token, heads in :data:`HEADS` order."""
    steps, cells = spec.num_frames // TOKEN_FRAMES, spec.size // TOKEN_PIXELS
    labels = np.zeros((steps, cells, cells, len(HEADS)), dtype=np.int64)  # (T', H', W', heads)
    backgrounds, colors = list(BACKGROUNDS), list(FLASH_COLORS)
    half = OBJECT_SIZE / 2
    for step in range(steps):
        frame = step * TOKEN_FRAMES
        k = spec.scene_at(frame)
        scene = spec.scenes[k]
        labels[step, :, :, 0] = backgrounds.index(scene.background)
        for index in range(len(scene.objects)):
            x, y = object_position(spec, k, index, frame)
            row, col = int((y + half) // TOKEN_PIXELS), int((x + half) // TOKEN_PIXELS)
            labels[step, row, col, 1] = 1 + SHAPES.index(scene.shape)
        if spec.mover.scene == k:
            moved = _mover_change(spec, frame)  # (H', W') bool
            labels[step, :, :, 3][moved] = 1 + DIRECTIONS.index(spec.mover.direction)
        flash = spec.flash
        if flash.start <= frame < flash.start + FLASH_FRAMES:
            labels[step, flash.cy // TOKEN_PIXELS, flash.cx // TOKEN_PIXELS, 2] = 1 + colors.index(flash.color)
    return labels


def _mover_change(spec: VideoSpec, frame: int) -> np.ndarray:
    """``(S / 16, S / 16)`` bool: the tokens in which the mover's mask differs between ``frame`` and ``frame + 1``."""
    mover = spec.mover
    mask = shape_mask(spec.scenes[mover.scene].shape)
    canvases = []
    for f in (frame, frame + 1):
        canvas = np.zeros((spec.size + OBJECT_SIZE, spec.size + OBJECT_SIZE), dtype=bool)  # room for the edge
        x, y = object_position(spec, mover.scene, mover.index, f)
        canvas[y : y + OBJECT_SIZE, x : x + OBJECT_SIZE] = mask
        canvases.append(canvas[: spec.size, : spec.size])
    changed = canvases[0] ^ canvases[1]  # (S, S)
    cells = spec.size // TOKEN_PIXELS
    return changed.reshape(cells, TOKEN_PIXELS, cells, TOKEN_PIXELS).any(axis=(1, 3))


def video_summary(spec: VideoSpec) -> np.ndarray:
    """``(len(SUMMARY),)`` int64: the facts the questions ask about, heads in :data:`SUMMARY` order (counts
    from 0: class 0 = one scene / one object)."""
    first, last = spec.scenes[0], spec.scenes[-1]
    return np.array(
        [
            len(spec.scenes) - 1,
            SHAPES.index(first.shape),
            SHAPES.index(last.shape),
            len(first.objects) - 1,
            len(last.objects) - 1,
            DIRECTIONS.index(spec.mover.direction),
            list(FLASH_COLORS).index(spec.flash.color),
        ],
        dtype=np.int64,
    )

