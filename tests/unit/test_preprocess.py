"""Test-time preprocessing against hand-computed values."""

import numpy as np
import pytest
from PIL import Image

from service.contract.manifest import Preprocessing
from service.contract.preprocess import center_crop, crop_corners, normalize, preprocess_clip, scale, scale_size


@pytest.mark.parametrize(
    ("size", "fixed", "expected"),
    [
        ((320, 240), False, (341, 256)),  # int(256*320/240) = 341
        ((240, 320), False, (256, 341)),
        ((1280, 720), False, (455, 256)),  # int(256*1280/720) = 455.1 -> 455
        ((256, 400), False, (256, 400)),  # short side already 256: untouched
        ((300, 300), False, (256, 256)),
        ((1280, 720), True, (341, 256)),  # predict.py helper: long side fixed at 341
        ((720, 1280), True, (256, 341)),
    ],
)
def test_scale_size(size: tuple[int, int], fixed: bool, expected: tuple[int, int]) -> None:
    assert scale_size(*size, 256, fixed) == expected


def test_center_crop_uses_bankers_rounding_offsets() -> None:
    img = Image.fromarray(np.arange(7 * 5, dtype=np.uint8).reshape(5, 7))
    # (7-2)/2 = 2.5 -> round() = 2; (5-2)/2 = 1.5 -> 2
    got = np.asarray(center_crop(img, 2))
    np.testing.assert_array_equal(got, np.array([[16, 17], [23, 24]], dtype=np.uint8))
    # (9-2)/2 = 3.5 -> round() = 4 (floor would give 3); (4-2)/2 = 1 -> 1
    wide = Image.fromarray(np.arange(9 * 4, dtype=np.uint8).reshape(4, 9))
    np.testing.assert_array_equal(np.asarray(center_crop(wide, 2)), np.array([[13, 14], [22, 23]], dtype=np.uint8))


def test_scale_is_pils_bilinear_with_its_antialiasing_triangle() -> None:
    """Hand-computed: a triangle filter whose support grows with the downscale factor (PIL's BILINEAR), not a
    two-pixel interpolation (OpenCV's INTER_LINEAR) nor nearest neighbour."""
    # Up 2 -> 4: output centres at 0.25, 0.75, 1.25, 1.75 of the input; edge weights renormalised.
    up = np.asarray(scale(Image.fromarray(np.array([[0, 100], [0, 100]], dtype=np.uint8)), 4))
    np.testing.assert_array_equal(up, np.tile(np.array([0, 25, 75, 100], dtype=np.uint8), (4, 1)))
    # Down 4 -> 2: support 2 input pixels; centre 1.0 weighs pixels 0, 1, 2 by .75, .75, .25 -> 50/1.75 = 28.6,
    # centre 3.0 weighs pixels 1, 2, 3 by .25, .75, .75 -> 160/1.75 = 91.4 (a two-tap filter would give 20, 100).
    row = np.array([0, 40, 80, 120], dtype=np.uint8)
    down = np.asarray(scale(Image.fromarray(np.tile(row, (4, 1))), 2))
    np.testing.assert_array_equal(down, np.array([[29, 91], [29, 91]], dtype=np.uint8))


def test_normalize_hand_computed() -> None:
    frames = np.zeros((1, 1, 1, 3), dtype=np.uint8)
    frames[0, 0, 0] = [255, 0, 128]
    out = normalize(frames, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert out.shape == (1, 3, 1, 1) and out.dtype == np.float32
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(out[0, :, 0, 0], expected, rtol=1e-6)


def test_preprocess_clip_shape_and_uniform_colour() -> None:
    spec = Preprocessing(num_seg=2, short_side=32, crop_size=24)
    frames = np.full((2, 48, 80, 3), (255, 0, 128), dtype=np.uint8)  # uniform: resize keeps values
    out = preprocess_clip(frames, spec)
    assert out.shape == (2, 3, 24, 24)
    np.testing.assert_allclose(out[:, 0], (1 - 0.485) / 0.229, rtol=1e-6)
    np.testing.assert_allclose(out[:, 1], -0.456 / 0.224, rtol=1e-6)


def test_three_crops_sit_at_the_start_centre_and_end_of_the_long_side() -> None:
    assert crop_corners(9, 4, 2) == [(4, 1)]  # one crop: the centre, as center_crop
    assert crop_corners(9, 4, 2, crops=3) == [(0, 1), (4, 1), (7, 1)]
    assert crop_corners(4, 9, 2, crops=3) == [(1, 0), (1, 4), (1, 7)]  # tall: along the height
    assert crop_corners(5, 5, 3, crops=3) == [(0, 1), (1, 1), (2, 1)]  # square: along the width
    with pytest.raises(ValueError, match="smaller than the crop"):
        crop_corners(5, 3, 4, crops=3)


def test_three_crop_clip_is_each_crop_in_time_order_one_after_another() -> None:
    # Frames already at the short side (no resize): pixel value = 10 * frame + column, so every crop and frame
    # is identified by its first pixel.
    spec = Preprocessing(num_seg=2, short_side=8, crop_size=8, spatial_crops=3, mean=(0, 0, 0), std=(1, 1, 1))
    frames = np.zeros((2, 8, 20, 3), dtype=np.uint8)
    frames += (10 * np.arange(2)[:, None, None, None] + np.arange(20)[None, None, :, None]).astype(np.uint8)
    out = preprocess_clip(frames, spec)
    assert out.shape == (6, 3, 8, 8)
    # Rows: the left crop (columns 0-7) at frames 0, 1; the centre (6-13); the right (12-19).
    first_pixels = np.rint(out[:, 0, 0, 0] * 255).astype(int).tolist()
    assert first_pixels == [0, 10, 6, 16, 12, 22]
    np.testing.assert_allclose(out[4, 0, 0] * 255, np.arange(12, 20), atol=1e-4)


def test_preprocess_clip_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        preprocess_clip(np.zeros((2, 8, 8), dtype=np.uint8), Preprocessing())
