"""A training step (forward, backward, Adam) with the shift as slices or as Paddle's fused op, side by side.

Training runs the fused op (``training.loop.training_shift``); the values are the same bit for bit
(``tests/integration/test_training_job.py``), so only the time may differ. Shapes: the demo's 4 x 64 px
and the long recipe's refine stage at 8 x 96 px, 8 clips a step as each of the demo's two data-parallel
processes takes, and one R50 8 x 224 clip as a Kinetics config on a CPU would.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tests.benchmarks.common import interleave, median, table, write_report

SHAPES = [  # (name, depth, base width, segments, crop, clips a step)
    ("demo 4 x 64, R18 width 16", 18, 16, 4, 64, 8),
    ("refine 8 x 96, R18 width 16", 18, 16, 8, 96, 8),
    ("R50 8 x 224", 50, 64, 8, 224, 1),
]


def _step(depth: int, width: int, num_seg: int, crop: int, clips: int, impl: str) -> Callable[[], None]:
    """One training step of a fresh network on a fixed random batch."""
    import paddle

    from training.tsm import build_tsm

    paddle.seed(0)
    model = build_tsm(depth, num_classes=8, num_seg=num_seg, base_width=width, drop_ratio=0.3,
                      shift_impl=impl)  # type: ignore[arg-type]
    model.train()
    optimizer = paddle.optimizer.Adam(1e-4, parameters=model.parameters())
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.standard_normal((clips, num_seg, 3, crop, crop)).astype(np.float32))
    y = paddle.to_tensor(rng.integers(0, 8, (clips, 1)))

    def step() -> None:
        loss = paddle.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        float(loss)

    return step


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    rows = []
    for name, depth, width, num_seg, crop, clips in SHAPES:
        rounds = args.rounds if depth < 50 else max(3, args.rounds // 3)
        times = interleave({impl: _step(depth, width, num_seg, crop, clips, impl) for impl in ("slice", "fused")},
                           rounds, warmup=2)
        sliced, fused = median(times["slice"]), median(times["fused"])
        rows.append([name, clips, rounds, sliced * 1e3, fused * 1e3, sliced / fused])
    text = ("Median of interleaved steps (slice, fused, slice, ...) in one process, Paddle's default CPU threads.\n\n"
            + table(["network and clip", "clips a step", "steps each", "slices ms", "fused ms", "speed-up"], rows))
    return write_report("training_step", "Training step: the shift as slices or as the fused op", [text])


if __name__ == "__main__":
    main()
