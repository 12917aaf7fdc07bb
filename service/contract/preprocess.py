"""Test-time preprocessing: decoded RGB frames -> the normalised TSM input (pure).

Mirrors PaddleVideo's test pipeline ``Scale -> CenterCrop -> Image2Array -> Normalization``
with PIL's bilinear resize, so serving and evaluation produce the same tensor bit for bit; with
``spatial_crops=3`` three crops along the long side replace the centre crop.
Training's evaluation path and the service both call :func:`preprocess_clip`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from service.contract.manifest import Preprocessing


def scale_size(width: int, height: int, short_side: int, fixed_ratio: bool) -> tuple[int, int]:
    """Output (width, height) of PaddleVideo's ``Scale``; returns the input size if untouched."""
    if (width <= height and width == short_side) or (height <= width and height == short_side):
        return width, height
    long_fixed = int(short_side * 4.0 / 3.0)
    if width <= height:
        return short_side, long_fixed if fixed_ratio else int(short_side * height / width)
    return (long_fixed if fixed_ratio else int(short_side * width / height)), short_side


def scale(img: Image.Image, short_side: int, fixed_ratio: bool = False) -> Image.Image:
    """Resize so the short side is ``short_side`` (PIL bilinear, as PaddleVideo)."""
    size = scale_size(img.width, img.height, short_side, fixed_ratio)
    if size == (img.width, img.height):
        return img
    return img.resize(size, Image.BILINEAR)


def crop_corners(width: int, height: int, crop_size: int, crops: int = 1) -> list[tuple[int, int]]:
    """Top-left corners of the square crops: one, PaddleVideo's centre ``round((w - crop) / 2)``; three, the
    start, centre and end of the long side (the width of a square frame), centred on the short side."""
    if width < crop_size or height < crop_size:
        raise ValueError(f"image {width}x{height} is smaller than the crop {crop_size}")
    x1, y1 = round((width - crop_size) / 2), round((height - crop_size) / 2)
    if crops == 1:
        return [(x1, y1)]
    if width >= height:
        return [(0, y1), (x1, y1), (width - crop_size, y1)]
    return [(x1, 0), (x1, y1), (x1, height - crop_size)]


def center_crop(img: Image.Image, crop_size: int) -> Image.Image:
    """Centre square crop with PaddleVideo's offsets ``int(round((w - crop) / 2))``."""
    ((x1, y1),) = crop_corners(img.width, img.height, crop_size)
    return img.crop((x1, y1, x1 + crop_size, y1 + crop_size))


def normalize(frames: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 or float [T, H, W, 3] RGB in 0..255 -> float32 [T, 3, H, W], ``(x/255 - mean)/std``."""
    chw = frames.astype(np.float32).transpose(0, 3, 1, 2)
    mean_arr = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std_arr = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    out = chw / 255.0
    out -= mean_arr
    out /= std_arr
    return np.ascontiguousarray(out, dtype=np.float32)


def preprocess_clip(frames: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """Sampled RGB frames uint8 [T, H, W, 3] -> float32 [crops * T, 3, crop, crop] (crop after crop, each in
    time order), ready for batching."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames [T, H, W, 3], got shape {frames.shape}")
    scaled = [np.asarray(scale(Image.fromarray(f), spec.short_side, spec.fixed_ratio)) for f in frames]
    c = spec.crop_size
    corners = crop_corners(scaled[0].shape[1], scaled[0].shape[0], c, spec.spatial_crops)
    cropped = [img[y:y + c, x:x + c] for x, y in corners for img in scaled]
    return normalize(np.stack(cropped), spec.mean, spec.std)
