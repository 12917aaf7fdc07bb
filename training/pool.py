"""Run independent jobs on worker processes with a progress bar, results in job order."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from typing import TypeVar

from tqdm import tqdm

J = TypeVar("J")
R = TypeVar("R")


def run_tasks(fn: Callable[[J], R], jobs: Sequence[J], workers: int, desc: str, unit: str = "job") -> list[R]:
    """``[fn(job) for job in jobs]`` on ``workers`` processes (in this one if ``workers`` <= 1)."""
    results: list[R] = []
    with tqdm(total=len(jobs), desc=desc, unit=unit) as bar:
        if workers <= 1:
            for job in jobs:
                results.append(fn(job))
                bar.update()
            return results
        # spawn: safe next to threads and CUDA; fn and the jobs must pickle
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for result in pool.imap(fn, jobs):
                results.append(result)
                bar.update()
    return results
