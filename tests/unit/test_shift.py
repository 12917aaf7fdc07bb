"""The temporal shift against an independent numpy reference and Paddle's fused op."""

import numpy as np
import paddle
import pytest

from training.tsm.shift import temporal_shift


def reference_shift(x: np.ndarray, num_seg: int, ratio: float) -> np.ndarray:
    """Loop-by-loop definition from the TSM paper / F.temporal_shift docs, NCHW; the op's shift_ratio is a float32
    attribute, so the group ends are float32 products."""
    nt, c, h, w = x.shape
    v = x.reshape(nt // num_seg, num_seg, c, h, w)
    out = np.zeros_like(v)
    f1, f2 = int(np.float32(c) * np.float32(ratio)), int(np.float32(2 * c) * np.float32(ratio))
    for n in range(v.shape[0]):
        for t in range(num_seg):
            for ch in range(c):
                if ch < f1:
                    src = t - 1
                elif ch < f2:
                    src = t + 1
                else:
                    src = t
                if 0 <= src < num_seg:
                    out[n, t, ch] = v[n, src, ch]
    return out.reshape(nt, c, h, w)


@pytest.mark.parametrize(("n", "t", "c"), [(1, 8, 16), (3, 8, 64), (2, 4, 10), (2, 3, 7), (1, 1, 8)])
def test_matches_numpy_reference_nchw(n: int, t: int, c: int) -> None:
    x = np.random.default_rng(0).standard_normal((n * t, c, 3, 2)).astype(np.float32)
    got = temporal_shift(paddle.to_tensor(x), t, 1.0 / t, "NCHW").numpy()
    np.testing.assert_array_equal(got, reference_shift(x, t, 1.0 / t))


@pytest.mark.parametrize(("n", "t", "c"), [(2, 8, 16), (2, 4, 12)])
def test_nhwc_shifts_last_axis_identically(n: int, t: int, c: int) -> None:
    x = np.random.default_rng(1).standard_normal((n * t, c, 4, 5)).astype(np.float32)
    nhwc = paddle.to_tensor(x.transpose(0, 2, 3, 1))
    got = temporal_shift(nhwc, t, 1.0 / t, "NHWC").numpy().transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(got, reference_shift(x, t, 1.0 / t))


@pytest.mark.parametrize(("t", "c"), [(41, 41), (41, 82), (47, 47), (49, 49)])
def test_cuts_where_the_fused_op_cuts_when_float32_and_double_disagree(t: int, c: int) -> None:
    """int(41 * (1/41)) is 1 in double and 0 in float32 products: the slices cut one channel off the fused op's."""
    assert int(c * (1.0 / t)) != int(np.float32(c) * np.float32(1.0 / t))  # such a pair, or the test proves nothing
    x = paddle.to_tensor(np.random.default_rng(2).standard_normal((2 * t, c, 1, 2)).astype(np.float32))
    fused = paddle.nn.functional.temporal_shift(x, seg_num=t, shift_ratio=1.0 / t)
    np.testing.assert_array_equal(temporal_shift(x, t, 1.0 / t).numpy(), fused.numpy())
    np.testing.assert_array_equal(temporal_shift(x, t, 1.0 / t).numpy(), reference_shift(x.numpy(), t, 1.0 / t))


def test_equals_paddle_fused_op() -> None:
    x = paddle.randn([2 * 8, 32, 7, 7])
    fused = paddle.nn.functional.temporal_shift(x, seg_num=8, shift_ratio=0.125)
    np.testing.assert_array_equal(temporal_shift(x, 8, 0.125).numpy(), fused.numpy())


def test_videos_never_mix() -> None:
    """Changing video 1 must leave video 0's output untouched."""
    x = np.random.default_rng(2).standard_normal((16, 16, 2, 2)).astype(np.float32)
    y = x.copy()
    y[8:] += 100.0
    a = temporal_shift(paddle.to_tensor(x), 8, 0.125).numpy()
    b = temporal_shift(paddle.to_tensor(y), 8, 0.125).numpy()
    np.testing.assert_array_equal(a[:8], b[:8])
    assert not np.array_equal(a[8:], b[8:])
