"""Prototype: other formulations of the temporal shift under Paddle Inference + oneDNN (R50 8x224).

The shipped ``slice`` shift reshapes to [N, T, C, H, W] and slices/concats there; ``rows``
stays 4-D: it shifts whole rows of the [N*T, C, H, W] tensor along axis 0 and zeroes the rows
that crossed a clip edge with a [N*T, 1, 1, 1] mask, so no 5-D view is needed. Outputs must be
identical; timed interleaved with sgemm and the shipped export. Not wired into training: the
report says what to change if it wins.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import paddle

from tests.benchmarks.common import (
    R50_GFLOP,
    export_r50,
    interleave,
    median,
    sgemm_gflops,
    sgemm_once,
    table,
    write_report,
)
from tests.benchmarks.engine import paddle_runner
from training.tsm.shift import fold


def shift_rows(x: paddle.Tensor, num_seg: int, shift_ratio: float, data_format: str = "NCHW",
               impl: str = "slice") -> paddle.Tensor:
    """Same result as ``temporal_shift`` for NCHW: x float [N*T, C, H, W] -> same shape."""
    channels = x.shape[1]
    f1, f2 = fold(channels, shift_ratio, 1), fold(channels, shift_ratio, 2)
    t = paddle.arange(paddle.shape(x)[0]) % num_seg  # [N*T] frame index within its clip
    not_first = (t != 0).astype(x.dtype).reshape([-1, 1, 1, 1])
    not_last = (t != num_seg - 1).astype(x.dtype).reshape([-1, 1, 1, 1])
    back = x[:, :f1]
    back = paddle.concat([paddle.zeros_like(back[:1]), back[:-1]], axis=0) * not_first  # row r <- r-1
    fwd = x[:, f1:f2]
    fwd = paddle.concat([fwd[1:], paddle.zeros_like(fwd[:1])], axis=0) * not_last  # row r <- r+1
    return paddle.concat([back, fwd, x[:, f2:]], axis=1)


def export_variant(tag: str, fn: object) -> Path:
    import training.tsm.backbone as backbone

    original = backbone.temporal_shift
    backbone.temporal_shift = fn  # type: ignore[assignment]
    try:
        return export_r50(tag)
    finally:
        backbone.temporal_shift = original


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args(argv)
    runners = {"slice (shipped)": paddle_runner(export_r50("slice"), 2),
               "rows (4-D, masked)": paddle_runner(export_variant("rows", shift_rows), 2),
               "no shift (TSN)": paddle_runner(export_r50("noshift", shift=False), 2)}
    x = np.random.default_rng(0).standard_normal((args.batch, 8, 3, 224, 224)).astype(np.float32)
    ref = runners["slice (shipped)"](x)
    diff = float(np.abs(runners["rows (4-D, masked)"](x) - ref).max() / np.abs(ref).max())
    times = interleave({"sgemm": sgemm_once, **{k: (lambda r=r: r(x)) for k, r in runners.items()}}, args.rounds)
    sgemm = sgemm_gflops(median(times.pop("sgemm")))
    gf = R50_GFLOP * args.batch
    rows = [[k, median(v) * 1e3, gf / median(v) / sgemm, median(times["slice (shipped)"]) / median(v)]
            for k, v in times.items()]
    text = (f"sgemm {sgemm:.1f} GFLOP/s; batch {args.batch}, 2 threads; rows vs slice max relative logit "
            f"difference {diff:.1e}.\n\n" + table(["shift", "ms/batch", "of sgemm", "speed vs slice"], rows))
    return write_report("shift_variants", "Temporal shift formulations under oneDNN (R50 8x224)", [text])


if __name__ == "__main__":
    main()
