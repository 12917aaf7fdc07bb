"""Training-only augmentation: PaddleVideo's MultiScaleCrop and one random flip per clip.

Test-time preprocessing is not here: it lives in ``service.contract.preprocess`` and is shared.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

SCALES = (1.0, 0.875, 0.75, 0.66)


def crop_offsets(width: int, height: int, crop_w: int, crop_h: int) -> list[tuple[float, float]]:
    """PaddleVideo's 13 fixed crop offsets (corners, centre, edge middles, quarter points)."""
    ws, hs = (width - crop_w) / 4, (height - crop_h) / 4
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
    return [(i * ws, j * hs) for i, j in grid]


def crop_size_pairs(width: int, height: int, target: int, scales: Sequence[float] = SCALES,
                    max_distort: int = 1) -> list[tuple[int, int]]:
    """Candidate (crop_w, crop_h): ``int(base*s)`` snapped to ``target`` within 3 px, |i-j| <= max_distort."""
    base = min(width, height)
    sizes = [int(base * s) for s in scales]
    snapped = [target if abs(s - target) < 3 else s for s in sizes]
    return [(w, h) for i, h in enumerate(snapped) for j, w in enumerate(snapped) if abs(i - j) <= max_distort]


def multi_scale_crop(frames: Sequence[Image.Image], target: int, rng: np.random.Generator,
                     scales: Sequence[float] = SCALES) -> list[Image.Image]:
    """One random scale pair and fixed offset for the whole clip, crop, bilinear resize to target²."""
    width, height = frames[0].size
    pairs = crop_size_pairs(width, height, target, scales)
    crop_w, crop_h = pairs[rng.integers(len(pairs))]
    offsets = crop_offsets(width, height, crop_w, crop_h)
    x, y = offsets[rng.integers(len(offsets))]
    box = (x, y, x + crop_w, y + crop_h)
    return [f.crop(box).resize((target, target), Image.BILINEAR) for f in frames]


def random_flip(frames: list[Image.Image], rng: np.random.Generator, prob: float = 0.5) -> list[Image.Image]:
    """Flip every frame of the clip horizontally, or none (one draw per clip)."""
    return flip_with_label(frames, 0, rng, prob, [])[0]


def flip_with_label(frames: list[Image.Image], label: int, rng: np.random.Generator, prob: float,
                    label_map: Sequence[int]) -> tuple[list[Image.Image], int]:
    """One horizontal-flip draw per clip; a flipped clip takes ``label_map[label]`` (unchanged if empty)."""
    if prob > 0 and rng.random() < prob:
        return [f.transpose(Image.FLIP_LEFT_RIGHT) for f in frames], (label_map[label] if label_map else label)
    return frames, label


def reverse_with_label(frames: np.ndarray, label: int, rng: np.random.Generator, prob: float,
                       label_map: Sequence[int]) -> tuple[np.ndarray, int]:
    """With probability ``prob`` play the clip [T, ...] backwards and take ``label_map[label]``."""
    if prob > 0 and rng.random() < prob:
        return frames[::-1], label_map[label]
    return frames, label
