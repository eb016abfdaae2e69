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
``mover``      0 = the mover's centre is not in the token, else 1 + its direction
=============  =====================================================================================
"""

from __future__ import annotations

import numpy as np

from hieravid.synthetic.render import object_position
from hieravid.synthetic.scenes import BACKGROUNDS, DIRECTIONS, FLASH_COLORS, FLASH_FRAMES, OBJECT_SIZE, SHAPES, VideoSpec

__all__ = ["HEADS", "TOKEN_PIXELS", "token_labels"]

TOKEN_PIXELS = 16  # side of the square a visual token covers
TOKEN_FRAMES = 2  # frames a visual token covers
HEADS = {
    "background": len(BACKGROUNDS),
    "object": 1 + len(SHAPES),
    "flash": 1 + len(FLASH_COLORS),
    "mover": 1 + len(DIRECTIONS),
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
            if (spec.mover.scene, spec.mover.index) == (k, index):
                labels[step, row, col, 3] = 1 + DIRECTIONS.index(spec.mover.direction)
        flash = spec.flash
        if flash.start <= frame < flash.start + FLASH_FRAMES:
            labels[step, flash.cy // TOKEN_PIXELS, flash.cx // TOKEN_PIXELS, 2] = 1 + colors.index(flash.color)
    return labels
