"""Segment sampling: which frame indices a TSM clip is built from (pure, numpy only).

All rules follow PaddleVideo's ``Sampler`` with ``seg_len=1`` and return 0-based indices
into a video of ``num_frames`` frames, one per segment.
"""

from __future__ import annotations

import numpy as np

from service.contract.manifest import SamplingRule


def test_indices(num_frames: int, num_seg: int, rule: SamplingRule = "paddlevideo_test") -> list[int]:
    """Deterministic test-time indices.

    ``paddlevideo_test`` (select_left=True, valid_mode): for L > T, ``int(a/2 + a*i)`` with
    ``a = L/T`` (float); for L <= T every index is 0 (PaddleVideo's behaviour, kept on purpose).
    ``paddlevideo_predict`` (select_left=False): ``d = L // T``; ``(d-1)//2 + i*d`` if d >= 1,
    else ``i``; then ``% L``.
    """
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if num_seg < 1:
        raise ValueError(f"num_seg must be >= 1, got {num_seg}")
    if rule == "paddlevideo_test":
        if num_frames <= num_seg:
            return [0] * num_seg
        step = num_frames / num_seg
        return [int(step / 2 + step * i) for i in range(num_seg)]
    if rule == "paddlevideo_predict":
        d = num_frames // num_seg
        raw = [(d - 1) // 2 + i * d for i in range(num_seg)] if d >= 1 else list(range(num_seg))
        return [i % num_frames for i in raw]
    raise ValueError(f"unknown sampling rule {rule!r}")


def train_indices(num_frames: int, num_seg: int, rng: np.random.Generator) -> list[int]:
    """Training indices: a uniform random frame inside each of ``num_seg`` equal segments.

    ``d = int(L/T)``; ``idx_i = i*d + r_i`` with ``r_i`` in ``[0, d)``; all zeros when L < T.
    """
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    d = num_frames // num_seg
    if d <= 0:
        return [0] * num_seg
    offsets = rng.integers(0, d, size=num_seg)
    return [int(i * d + r) % num_frames for i, r in enumerate(offsets)]
