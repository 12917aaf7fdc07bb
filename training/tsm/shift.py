"""The temporal shift of TSM as a pure function of a Paddle tensor.

Written with reshape/slice/concat rather than ``F.temporal_shift``: the output is identical,
and Paddle Inference's oneDNN path runs the exported slices much faster than the fused op.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import paddle

DataFormat = Literal["NCHW", "NHWC"]
ShiftImpl = Literal["slice", "fused"]


def temporal_shift(
    x: paddle.Tensor, num_seg: int, shift_ratio: float, data_format: DataFormat = "NCHW", impl: ShiftImpl = "slice"
) -> paddle.Tensor:
    """Shift channel groups along time, as ``paddle.nn.functional.temporal_shift``.

    x: float [N*T, C, H, W] (NCHW) or [N*T, H, W, C] (NHWC), rows ordered ``n*T + t``.
    Channels ``[0, f1)`` take frame t-1, ``[f1, f2)`` take frame t+1 (zeros past the clip
    edges), the rest stay; ``f1 = int(C*r)``, ``f2 = int(2*C*r)`` in float32, as the op computes them
    (``fold``). Videos never mix.
    ``impl="fused"`` calls Paddle's own op instead (PaddleVideo's export; the speed baseline).
    """
    if impl == "fused":
        return paddle.nn.functional.temporal_shift(x, num_seg, shift_ratio, data_format=data_format)
    channel_axis = 1 if data_format == "NCHW" else 3
    channels = x.shape[channel_axis]
    f1, f2 = fold(channels, shift_ratio, 1), fold(channels, shift_ratio, 2)
    if f2 == 0:
        return x
    if num_seg == 1:
        return _zero_shifted(x, f2, channel_axis)
    rest = list(x.shape[1:])
    clips = paddle.reshape(x, [-1, num_seg, *rest])  # [N, T, ...]
    axis = channel_axis + 1  # channel axis in the [N, T, ...] view

    def chan(t: paddle.Tensor, start: int, stop: int) -> paddle.Tensor:
        return paddle.slice(t, axes=[axis], starts=[start], ends=[stop])

    back = chan(clips, 0, f1)  # from t-1: frames 0..T-2 move to 1..T-1
    back = paddle.concat([paddle.zeros_like(back[:, :1]), back[:, : num_seg - 1]], axis=1)
    fwd = chan(clips, f1, f2)  # from t+1: frames 1..T-1 move to 0..T-2
    fwd = paddle.concat([fwd[:, 1:], paddle.zeros_like(fwd[:, :1])], axis=1)
    out = paddle.concat([back, fwd, chan(clips, f2, channels)], axis=axis)
    return paddle.reshape(out, [-1, *rest])


def fold(channels: int, shift_ratio: float, groups: int) -> int:
    """The end of the first ``groups`` shifted channel groups, ``int(groups*C*r)``. Paddle's kernel multiplies in
    float32 (its ``shift_ratio`` attribute is a float), which for a few (C, T) pairs with r = 1/T, e.g. C = T = 41,
    truncates one channel lower than double precision would: slices and fused op must cut at the same channel."""
    return int(np.float32(groups * channels) * np.float32(shift_ratio))


def _zero_shifted(x: paddle.Tensor, f2: int, channel_axis: int) -> paddle.Tensor:
    """num_seg == 1: both shifted groups fall off the clip, so they become zeros."""
    channels = x.shape[channel_axis]
    kept = paddle.slice(x, axes=[channel_axis], starts=[f2], ends=[channels])
    zeros = paddle.zeros_like(paddle.slice(x, axes=[channel_axis], starts=[0], ends=[f2]))
    return paddle.concat([zeros, kept], axis=channel_axis)
