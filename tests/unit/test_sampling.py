"""Segment sampling against an independent implementation and PaddleVideo's published examples."""

from fractions import Fraction

import numpy as np
import pytest

from service.contract.sampling import test_indices as centre_indices
from service.contract.sampling import train_indices


def oracle_test(length: int, num_seg: int) -> list[int]:
    """Exact rational arithmetic version of PaddleVideo's valid-mode select_left=True branch."""
    if length <= num_seg:
        return [0] * num_seg
    seg = Fraction(length, num_seg)
    return [int(seg / 2 + seg * i) for i in range(num_seg)]


def oracle_predict(length: int, num_seg: int) -> list[int]:
    seg = length // num_seg
    if seg == 0:
        return [i % length for i in range(num_seg)]
    return [((seg - 1) // 2 + seg * i) % length for i in range(num_seg)]


def test_paddlevideo_published_examples() -> None:
    assert centre_indices(300, 8) == [18, 56, 93, 131, 168, 206, 243, 281]
    assert centre_indices(300, 8, "paddlevideo_predict") == [18, 55, 92, 129, 166, 203, 240, 277]
    assert centre_indices(5, 8, "paddlevideo_predict") == [0, 1, 2, 3, 4, 0, 1, 2]


@pytest.mark.parametrize("length", [*range(1, 70), 97, 120, 299, 300, 301, 1000, 3001])
@pytest.mark.parametrize("num_seg", [1, 3, 8, 16])
def test_matches_oracle_normal_and_short(length: int, num_seg: int) -> None:
    assert centre_indices(length, num_seg) == oracle_test(length, num_seg)
    assert centre_indices(length, num_seg, "paddlevideo_predict") == oracle_predict(length, num_seg)


def test_short_video_including_exactly_num_seg_is_all_zero() -> None:
    assert centre_indices(8, 8) == [0] * 8
    assert centre_indices(1, 8) == [0] * 8
    assert centre_indices(9, 8) != [0] * 8


def test_rejects_empty_video() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        centre_indices(0, 8)


@pytest.mark.parametrize("length", [8, 9, 50, 301])
def test_train_indices_fall_one_per_segment(length: int) -> None:
    rng = np.random.default_rng(0)
    seg = length // 8
    seen = set()
    for _ in range(200):
        idx = train_indices(length, 8, rng)
        assert all(i * seg <= v < (i + 1) * seg for i, v in enumerate(idx))
        seen.add(tuple(idx))
    assert (len(seen) > 1) == (seg > 1)


def test_train_indices_short_video_all_zero() -> None:
    assert train_indices(5, 8, np.random.default_rng(0)) == [0] * 8
