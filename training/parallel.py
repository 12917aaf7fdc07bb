"""Data-parallel training started from Python: one process per CPU core (or GPU) on this machine.

The same as ``python -m paddle.distributed.launch --nproc_per_node N tsm-train train``, for callers such as
the demo that run several training stages in a row. Each process trains on its share of every global batch
and gradients are all-reduced (gloo on the CPU, NCCL on GPUs).
"""

from __future__ import annotations

import os
from pathlib import Path

from training.config import Config
from training.loop import RESULT_FILE, TrainResult, train


def default_procs(limit: int = 2) -> int:
    """Training processes for a small job on this machine: one if a GPU is present (data parallelism on GPUs
    needs one GPU a process), else one a CPU core, at most ``limit``."""
    import paddle

    if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        return 1
    return max(1, min(limit, len(os.sched_getaffinity(0))))


def _rank_main(cfg: Config, validate: bool, resume: Path | None) -> None:
    train(cfg, validate=validate, resume=resume)


def train_data_parallel(cfg: Config, nprocs: int, validate: bool = True, resume: Path | None = None) -> TrainResult:
    """Train ``cfg`` on ``nprocs`` processes (in this one if ``nprocs`` <= 1); ``data.batch_size`` is per process."""
    if nprocs <= 1:
        return train(cfg, validate=validate, resume=resume)
    import paddle.distributed as dist

    result_file = Path(cfg.train.output_dir) / RESULT_FILE
    result_file.unlink(missing_ok=True)  # never report an earlier run's result for this one
    dist.spawn(_rank_main, args=(cfg, validate, resume), nprocs=nprocs)  # raises if a process fails
    return TrainResult.read(result_file)
