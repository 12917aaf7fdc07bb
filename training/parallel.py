"""Data-parallel training started from Python: one process per CPU core (or GPU) on this machine.

The same as ``python -m paddle.distributed.launch --nproc_per_node N tsm-train train``, for callers such as
the demo that run several training stages in a row. Each process trains on its share of every global batch
and gradients are all-reduced (gloo on the CPU, NCCL on GPUs).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing.connection
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.config import Config
from training.interrupts import on_sigterm
from training.loop import TrainResult, train
from training.run_dir import RESULT_FILE, in_run_folder

log = logging.getLogger(__name__)
EXIT_GRACE_S = 60.0  # a rank that has returned its result gets this long to exit before it is ended
FAIL_GRACE_S = 10.0  # after one rank failed, the others get this long to end by themselves
PR_SET_PDEATHSIG = 1  # prctl option, <linux/prctl.h>: the signal this process gets when its parent dies


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
    cfg = in_run_folder(cfg, resume)  # where rank 0 writes the result: a resumed run's own folder
    result_file = Path(cfg.train.output_dir) / RESULT_FILE
    result_file.unlink(missing_ok=True)  # never report an earlier run's result for this one
    spawn_and_wait(_rank_main, (cfg, validate, resume), nprocs)
    return TrainResult.read(result_file)


def spawn_and_wait(func: Callable[..., None], args: tuple[Any, ...], nprocs: int,
                   exit_grace_s: float = EXIT_GRACE_S) -> None:
    """``paddle.distributed.spawn(func, args, nprocs)`` and wait for its processes; raises with the failed
    rank's traceback, ending the others, as spawn does.

    Unlike spawn's own join, nothing here can hang the caller forever: a failed rank's peers are killed, not
    sent SIGTERM (see :func:`_fail`), and a rank that has returned from ``func`` but does not exit within
    ``exit_grace_s`` (stuck in Paddle's C++ exit handlers) is killed with a warning: its work is complete, as
    spawn's wrapper queues the result only after ``func`` returns.

    Nor do the ranks outlive the caller: they die with its process (:func:`_die_with_parent`), and a SIGTERM
    while they run ends them and exits with status 143 (:func:`_exit_on_sigterm`).
    """
    import paddle.distributed as dist

    context = dist.spawn(_rank_start, args=(os.getpid(), func, *args), nprocs=nprocs, join=False)
    with on_sigterm(_exit_on_sigterm):
        try:
            _wait(context, exit_grace_s)
        finally:  # an exception or SIGTERM here: no rank outlives the wait
            _kill_all(context.processes)


def _wait(context: Any, exit_grace_s: float) -> None:
    """Wait until every rank of spawn's ``context`` has ended (see :func:`spawn_and_wait`)."""
    processes = context.processes
    returned_at: dict[int, float] = {}
    ended: set[int] = set()  # ranks killed here after returning: not failures
    while True:
        alive = [p.sentinel for p in processes if p.is_alive()]
        for rank, process in enumerate(processes):
            if process.exitcode not in (None, 0) and rank not in ended:
                _fail(context, rank)
        if not alive:
            break
        multiprocessing.connection.wait(alive, timeout=1)
        now = time.monotonic()
        for rank, process in enumerate(processes):
            if rank not in returned_at and not context.return_queues[rank].empty():
                returned_at[rank] = now
            if process.is_alive() and now - returned_at.get(rank, now) > exit_grace_s:
                log.warning("training rank %d (pid %d) finished its work %.0f s ago but has not exited; ending it",
                            rank, process.pid, now - returned_at[rank])
                ended.add(rank)
                process.kill()
                process.join()


def _fail(context: Any, rank: int, grace_s: float = FAIL_GRACE_S) -> None:
    """End every other rank and raise with ``rank``'s traceback (or its exit code).

    The others get ``grace_s`` to end by themselves (they usually hit the same error), then SIGKILL: never
    SIGTERM, as spawn's own join sends. Paddle handles SIGTERM by printing a C++ traceback, which allocates
    memory; a rank interrupted while freeing memory at exit then waits forever on the allocator's lock (seen:
    a single-threaded rank in futex_wait under paddle::framework::SignalHandle, hanging the job)."""
    deadline = time.monotonic() + grace_s
    for process in context.processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
    queue, process = context.error_queues[rank], context.processes[rank]
    why = queue.get() if not queue.empty() else f"exit code {process.exitcode}"
    raise RuntimeError(f"training rank {rank} failed:\n{why}")


def _kill_all(processes: list[Any]) -> None:
    """SIGKILL (see :func:`_fail` for why not SIGTERM) and reap every rank still running."""
    running = [p for p in processes if p.is_alive()]
    if running:
        log.warning("ending %d training rank(s) still running", len(running))
    for process in running:
        process.kill()
    for process in running:
        process.join()


def _exit_on_sigterm(signum: int) -> None:
    """While the ranks run, SIGTERM (``timeout``, ``docker stop``) exits here with 143: the ``finally`` in
    :func:`spawn_and_wait` ends the ranks and the program exits quietly, where Paddle's handler died at once
    and left the ranks training."""
    log.warning("SIGTERM: stopping the data-parallel training")
    raise SystemExit(128 + signum)


def _rank_start(parent_pid: int, func: Callable[..., None], *args: Any) -> None:
    """Each spawned rank's entry point: it must end with the process that spawned it, then runs ``func``."""
    _die_with_parent(parent_pid)
    # A SIGTERM to the whole process group (`timeout` sends one) kills a rank at once and quietly, instead of
    # running Paddle's handler, which prints a C++ traceback and can deadlock on the allocator (see _fail).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    func(*args)


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux only; elsewhere nothing is done).

    Without it a killed parent's ranks were re-parented to PID 1 and trained on for minutes, holding its pipes
    open. SIGKILL: the work is lost with the parent anyway, and SIGTERM would run Paddle's handler (see
    :func:`_fail`). The kernel tracks the parent *thread*: spawn_and_wait's thread waits until the ranks end."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed (%s): this rank will outlive a killed parent",
                    os.strerror(ctypes.get_errno()))
    if os.getppid() != parent_pid:  # the parent died before the prctl, which then never fires
        os._exit(1)
