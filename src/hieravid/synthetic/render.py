"""Pixels of a :class:`~hieravid.synthetic.scenes.VideoSpec`."""

from __future__ import annotations

import numpy as np

from hieravid.synthetic.scenes import (
    BACKGROUNDS,
    FLASH_COLORS,
    FLASH_FRAMES,
    FLASH_SIZE,
    OBJECT_COLORS,
    OBJECT_SIZE,
    VideoSpec,
)

__all__ = ["render", "object_position", "shape_mask"]

_STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def shape_mask(shape: str, size: int = OBJECT_SIZE) -> np.ndarray:
    """``(size, size)`` bool mask of ``shape`` in its bounding box."""
    y, x = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    c = size / 2
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "circle":
        return (x - c) ** 2 + (y - c) ** 2 <= c**2
    if shape == "triangle":  # apex up
        return (y >= size - 2 * size * np.minimum(x, size - x) / size) & (y <= size)
    if shape == "cross":
        bar = size / 3
        return (np.abs(x - c) <= bar / 2) | (np.abs(y - c) <= bar / 2)
    raise ValueError(f"unknown shape {shape!r}")


def _diamond(size: int = FLASH_SIZE) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] + 0.5
    c = size / 2
    return np.abs(x - c) + np.abs(y - c) <= c


def object_position(spec: VideoSpec, scene: int, index: int, frame: int) -> tuple[int, int]:
    """Top-left corner (x, y), pixels, of object ``index`` of ``scene`` at ``frame``."""
    obj = spec.scenes[scene].objects[index]
    mover = spec.mover
    if (mover.scene, mover.index) != (scene, index):
        return obj.x, obj.y
    dx, dy = _STEP[mover.direction]
    t = frame - spec.scenes[scene].start
    return int(round(obj.x + dx * mover.speed * t)), int(round(obj.y + dy * mover.speed * t))


def _paint(frame: np.ndarray, mask: np.ndarray, x: int, y: int, color: tuple[int, int, int]) -> None:
    h, w = mask.shape
    frame[y : y + h, x : x + w][mask] = color


def render(spec: VideoSpec) -> np.ndarray:
    """``(T, S, S, 3)`` uint8 RGB frames of ``spec``."""
    frames = np.empty((spec.num_frames, spec.size, spec.size, 3), dtype=np.uint8)  # (T, H, W, 3)
    for k, scene in enumerate(spec.scenes):
        frames[scene.start : scene.end] = BACKGROUNDS[scene.background]
        mask = shape_mask(scene.shape)
        for index, obj in enumerate(scene.objects):
            color = OBJECT_COLORS[obj.color]
            for t in range(scene.start, scene.end):
                x, y = object_position(spec, k, index, t)
                _paint(frames[t], mask, x, y, color)
    flash = spec.flash
    diamond = _diamond()
    half = FLASH_SIZE // 2
    for t in range(flash.start, flash.start + FLASH_FRAMES):
        _paint(frames[t], diamond, flash.cx - half, flash.cy - half, FLASH_COLORS[flash.color])
    return frames
