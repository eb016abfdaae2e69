"""What a synthetic video shows: scenes, objects, the moving object and the brief flash.

A :class:`VideoSpec` is pure data, sampled from a seed by :func:`sample_spec`; :mod:`hieravid.synthetic.render`
turns it into pixels and :mod:`hieravid.synthetic.questions` asks about it. Answers are computed from the spec,
never from the pixels.

Structure of every video (``NUM_FRAMES`` frames of ``FRAME_SIZE`` x ``FRAME_SIZE`` pixels):

* 1 to 4 **scenes**, cut without transition; consecutive scenes have different background colours; each scene
  lasts at least ``MIN_SCENE_FRAMES`` frames and cuts fall on even frames.
* each scene holds 1 to 4 **objects** of ONE shape (square, circle, triangle or cross), each in one of four
  colours, placed without overlap; they stand still (static stretches) ...
* ... except ONE object of ONE scene, the **mover**, which crosses the frame left, right, up or down at constant
  speed during its scene;
* ONE **flash** (the needle): a small diamond in one of four colours, visible in ``FLASH_FRAMES`` consecutive
  frames of one scene and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BACKGROUNDS",
    "DIRECTIONS",
    "FLASH_COLORS",
    "FLASH_FRAMES",
    "FRAME_SIZE",
    "MIN_SCENE_FRAMES",
    "NUM_FRAMES",
    "OBJECT_COLORS",
    "OBJECT_SIZE",
    "SHAPES",
    "Flash",
    "Mover",
    "SceneObject",
    "Scene",
    "VideoSpec",
    "sample_spec",
]

NUM_FRAMES = 32
FRAME_SIZE = 96  # pixels, square frames
MIN_SCENE_FRAMES = 6
FLASH_FRAMES = 2
OBJECT_SIZE = 24  # pixels, side of an object's bounding box: 1.5 tokens of 16 px
FLASH_SIZE = 28  # pixels, diagonal of the flash diamond
MOVE_PIXELS = 40  # how far the mover travels over its scene

SHAPES = ("square", "circle", "triangle", "cross")
DIRECTIONS = ("left", "right", "up", "down")
# RGB. Backgrounds are dark and muted, objects saturated, flashes light: the three never share a colour.
BACKGROUNDS = {
    "gray": (60, 60, 60),
    "navy": (20, 30, 90),
    "forest": (20, 80, 35),
    "maroon": (95, 25, 30),
    "olive": (85, 80, 20),
}
OBJECT_COLORS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 100, 255), "yellow": (240, 220, 40)}
FLASH_COLORS = {"white": (255, 255, 255), "magenta": (255, 60, 230), "cyan": (60, 240, 250), "orange": (255, 150, 30)}


@dataclass(frozen=True)
class SceneObject:
    """One object: top-left corner (pixels) at the scene's first frame, colour name."""

    x: int
    y: int
    color: str


@dataclass(frozen=True)
class Mover:
    """The moving object: index of the object in its scene, direction, pixels moved per frame."""

    scene: int
    index: int
    direction: str
    speed: float


@dataclass(frozen=True)
class Flash:
    """The needle: a diamond centred at (cx, cy) pixels, visible in frames [start, start + FLASH_FRAMES)."""

    scene: int
    start: int
    cx: int
    cy: int
    color: str


@dataclass(frozen=True)
class Scene:
    """Frames [start, end) on one background, with objects of one shape."""

    start: int
    end: int
    background: str
    shape: str
    objects: tuple[SceneObject, ...]

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class VideoSpec:
    """Everything a synthetic video shows (see the module docstring)."""

    scenes: tuple[Scene, ...]
    mover: Mover
    flash: Flash
    num_frames: int = NUM_FRAMES
    size: int = FRAME_SIZE

    def scene_at(self, frame: int) -> int:
        """Index of the scene showing ``frame``."""
        for k, scene in enumerate(self.scenes):
            if scene.start <= frame < scene.end:
                return k
        raise ValueError(f"frame {frame} outside 0..{self.num_frames - 1}")


def _cuts(rng: np.random.Generator, scenes: int) -> tuple[list[int], list[int]]:
    """Scene starts and lengths: even frames, every scene at least MIN_SCENE_FRAMES long."""
    slack = NUM_FRAMES - scenes * MIN_SCENE_FRAMES  # frames to share out beyond the minimum, in pairs
    extra = rng.multinomial(slack // 2, np.full(scenes, 1.0 / scenes)) * 2
    lengths = MIN_SCENE_FRAMES + extra
    lengths[-1] += NUM_FRAMES - lengths.sum()
    return [0, *np.cumsum(lengths)[:-1].tolist()], lengths.tolist()


def _place(rng: np.random.Generator, count: int, avoid: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``count`` non-overlapping top-left corners on a coarse grid of cells (never touching ``avoid``)."""
    cells = (FRAME_SIZE - 4) // (OBJECT_SIZE + 4)  # 3 cells per side
    free = [(r, c) for r in range(cells) for c in range(cells) if (r, c) not in avoid]
    chosen = rng.choice(len(free), size=count, replace=False)
    pitch = OBJECT_SIZE + 4
    corners = []
    for i in chosen:
        r, c = free[int(i)]
        jitter = rng.integers(0, 4, size=2)
        corners.append((int(2 + c * pitch + jitter[0]), int(2 + r * pitch + jitter[1])))
    return corners


def sample_spec(rng: np.random.Generator) -> VideoSpec:
    """A random video: the number of scenes, their lengths, backgrounds, shapes, objects, the mover and the flash."""
    num_scenes = int(rng.integers(1, 5))
    starts, lengths = _cuts(rng, num_scenes)
    backgrounds = list(BACKGROUNDS)
    scenes = []
    previous = None
    for start, length in zip(starts, lengths):
        background = str(rng.choice([b for b in backgrounds if b != previous]))
        previous = background
        shape = str(rng.choice(SHAPES))
        count = int(rng.integers(1, 5))
        colors = rng.choice(list(OBJECT_COLORS), size=count)
        corners = _place(rng, count, avoid=[])
        objects = tuple(SceneObject(x, y, str(color)) for (x, y), color in zip(corners, colors))
        scenes.append(Scene(start, start + length, background, shape, objects))

    mover_scene = int(rng.integers(num_scenes))
    scene = scenes[mover_scene]
    direction = str(rng.choice(DIRECTIONS))
    index = int(rng.integers(len(scene.objects)))
    # Start the mover where it has room to travel MOVE_PIXELS in its direction; it may pass over other objects.
    lo, hi = 2, FRAME_SIZE - OBJECT_SIZE - 2 - MOVE_PIXELS
    start_along = int(rng.integers(lo, hi + 1))
    if direction in ("left", "up"):
        start_along += MOVE_PIXELS
    across = int(rng.integers(2, FRAME_SIZE - OBJECT_SIZE - 2))
    x, y = (start_along, across) if direction in ("left", "right") else (across, start_along)
    objects = list(scene.objects)
    objects[index] = SceneObject(x, y, objects[index].color)
    scenes[mover_scene] = Scene(scene.start, scene.end, scene.background, scene.shape, tuple(objects))
    speed = MOVE_PIXELS / max(scene.length - 1, 1)
    mover = Mover(mover_scene, index, direction, speed)

    flash_scene = int(rng.integers(num_scenes))
    scene = scenes[flash_scene]
    start = scene.start + 2 * int(rng.integers(0, (scene.length - FLASH_FRAMES) // 2 + 1))
    half = FLASH_SIZE // 2
    cx, cy = (int(v) for v in rng.integers(half + 1, FRAME_SIZE - half - 1, size=2))
    flash = Flash(flash_scene, start, cx, cy, str(rng.choice(list(FLASH_COLORS))))
    return VideoSpec(scenes=tuple(scenes), mover=mover, flash=flash)
