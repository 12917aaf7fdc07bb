"""A small pool of decoder processes with per-task timeouts and replacement of dead workers.

Why not ``concurrent.futures.ProcessPoolExecutor``: when one of its workers dies (a decoder
segfault, the OOM killer, ``kill -9``) the whole executor turns into ``BrokenProcessPool`` and
every queued and future task fails, and it cannot kill a single hung task. Here each worker
is one process with its own pipe, so a crash shows up as EOF on that pipe only, a hang as a
poll timeout on it; either way only that worker is killed and replaced and only its request
fails with a clear error. When the replacement cannot be started (the OS refuses a process or
a file descriptor), the slot is kept and its start retried after a short backoff, also without
traffic; while no slot has a worker, requests get a 503 at once and /readyz answers 503. A worker
that dies while idle (the OOM killer, ``kill -9``) is found by a sweep every ``WATCH_INTERVAL_S`` and
replaced then, so /readyz does not count it and no request pays for its restart.

Each process and its pipe is a :class:`~service.decode_process.DecoderProcess` (forkserver, started in
milliseconds). Blocking pipe calls run in a thread per worker, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from service import decode_worker
from service.decode_process import DecoderProcess
from service.errors import (
    DecoderUnavailableError,
    NotReadyError,
    QueueFullError,
    counted,
)

log = logging.getLogger(__name__)

RESPAWN_BACKOFF_S = 1.0  # between attempts to start a worker the OS refused; short, an outage costs 503s
WATCH_INTERVAL_S = 1.0  # between sweeps for workers that died idle; a liveness check costs a poll of a pipe


class DecodePool:
    """``size`` decoder processes; :meth:`run` is awaited by requests, one task per worker at a time.

    A slot is an index into ``_workers``; whoever takes it from the idle queue owns it until it
    hands it back, so a slot's worker is only ever replaced by its owner.
    """

    def __init__(self, size: int, timeout_s: float, memory_mb: int,
                 task: Callable[..., Any] = decode_worker.decode_task,
                 on_replace: Callable[[str], None] | None = None, queue_capacity: int | None = None,
                 respawn_backoff_s: float = RESPAWN_BACKOFF_S, watch_interval_s: float = WATCH_INTERVAL_S) -> None:
        """``on_replace(reason)`` is called for each replaced worker (crashed, timeout, out_of_memory);
        at most ``queue_capacity`` requests wait for a free worker (more get 503 at once)."""
        self.size, self.timeout_s, self.memory_mb, self.task = size, timeout_s, memory_mb, task
        self.queue_capacity = queue_capacity
        self.respawn_backoff_s, self.watch_interval_s = respawn_backoff_s, watch_interval_s
        self.waiting = 0
        self._on_replace = on_replace
        self._workers: list[DecoderProcess] = []  # by slot; a broken slot keeps its dead worker
        self._busy: dict[int, DecoderProcess] = {}
        self._broken: dict[int, float] = {}  # slot -> when its next start may be tried (monotonic)
        self._parked: set[int] = set()  # broken slots held out of the idle queue while others still serve
        self._lock = threading.Lock()
        self._idle: asyncio.Queue[int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._heal_timer: asyncio.TimerHandle | None = None
        self._watch_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._threads = ThreadPoolExecutor(max_workers=size, thread_name_prefix="tsm-decode")
        self.replaced = 0

    def start(self) -> None:
        """Start the processes (blocking; call from the lifespan before serving)."""
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Queue()
        for slot in range(self.size):
            self._workers.append(self._spawn())
            self._idle.put_nowait(slot)
        self._watch_timer = self._loop.call_later(self.watch_interval_s, self._sweep)

    def _spawn(self) -> DecoderProcess:
        """One new decoder process; raises whatever the OS refuses it with (``OSError`` mostly)."""
        return DecoderProcess(self.task, self.memory_mb)

    def pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._workers]

    def busy_pids(self) -> list[int]:
        """Pids of workers running a task now (tests use it to kill one mid-request)."""
        with self._lock:
            return [w.pid for w in self._busy.values()]

    def usable(self) -> int:
        """Slots that have a started worker (the others wait for a retry of a refused start)."""
        with self._lock:
            return self.size - len(self._broken)

    def admit(self) -> None:
        """Raise the 503 :meth:`run` would, before a request spends time uploading (cheap overload refusal)."""
        assert self._idle is not None
        if self.usable() == 0:
            raise self._unavailable()
        if self.queue_capacity is not None and self._idle.empty() and self.waiting >= self.queue_capacity:
            raise QueueFullError(f"{counted(self.waiting, 'video')} already waiting for a decoder; retry shortly",
                                 retry_after_s=1)

    def _unavailable(self) -> DecoderUnavailableError:
        return DecoderUnavailableError(
            "no decoder process could be started (the system refused a new process); the server keeps "
            "trying, retry shortly", retry_after_s=max(1, round(self.respawn_backoff_s)))

    async def run(self, *args: Any) -> Any:
        """Run the task with ``args`` in a free worker; raises an :class:`UndecodableVideoError` kind."""
        assert self._idle is not None and self._loop is not None, "DecodePool.start() was not called"
        self.admit()  # overload shows here first when decoding is the bottleneck: refuse now, not at the deadline
        self.waiting += 1
        try:
            slot = await self._idle.get()
        finally:
            self.waiting -= 1
        # The thread owns the slot until it hands it back, so a cancelled request (deadline, client gone) never
        # returns a still-busy worker to the idle queue; but a job cancelled before any thread took it never runs
        # (the previous job hands the slot back just before its thread is free), so then the slot comes back here.
        # In the request's context: what the job logs carries its request id.
        job = self._threads.submit(contextvars.copy_context().run, self._call_and_release, slot, args)
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            if job.cancel():  # True only if it never started
                self._release(slot)
            raise

    def _call_and_release(self, slot: int, args: tuple[Any, ...]) -> Any:
        try:
            if not self._revive(slot):
                if self._closed:
                    raise NotReadyError("the server is shutting down; retry on another replica", retry_after_s=1)
                raise self._unavailable()
            worker = self._workers[slot]
            with self._lock:
                self._busy[worker.pid] = worker
            try:
                return worker.call(args, self.timeout_s)
            finally:
                with self._lock:
                    self._busy.pop(worker.pid, None)
        finally:
            self._revive_and_release(slot)  # a worker that just died is replaced now, not when the next one waits

    def _revive(self, slot: int) -> bool:
        """True when ``slot`` has a live worker, starting one if it died (and its backoff, if any, is over).

        Never raises: a refused start marks the slot broken instead of losing it.
        """
        if self._closed:
            return False  # shutting down: start nothing new
        dead = self._workers[slot]
        if dead.alive():
            return True
        with self._lock:
            retry_at = self._broken.get(slot)
        if retry_at is not None and time.monotonic() < retry_at:
            return False
        try:
            self._replace(slot, dead, first_try=retry_at is None)
        except Exception as exc:  # the OS's refusal, whatever its type: keep the slot, try again later
            log.error("could not start a decoder worker (%s: %s); retrying in %g s",
                      type(exc).__name__, exc, self.respawn_backoff_s)
            with self._lock:
                self._broken[slot] = time.monotonic() + self.respawn_backoff_s
            return False
        with self._lock:
            self._broken.pop(slot, None)
        return True

    def _replace(self, slot: int, dead: DecoderProcess, *, first_try: bool) -> None:
        if first_try:  # retries of a refused start log only their error
            log.warning("decoder worker %d ended (%s, exit code %s); starting a replacement",
                        dead.pid, dead.failure, dead.process.exitcode)
        dead.conn.close()
        fresh = self._spawn()
        with self._lock:
            self._workers[slot] = fresh
            self.replaced += 1  # pool threads and heal retries replace at once
        if self._on_replace is not None:
            self._on_replace(dead.failure)

    def _release(self, slot: int) -> None:
        """Hand ``slot`` back: to the idle queue, or, when broken while another slot still has a worker,
        aside (waiters then get a working slot, not a quick 503). A broken slot gets a retry scheduled."""
        assert self._loop is not None and self._idle is not None
        with self._lock:
            broken = slot in self._broken
            park = broken and len(self._broken) < self.size
            if park:
                self._parked.add(slot)
        if self._loop.is_closed():
            return
        if not park:  # with every slot broken it goes back too, so that a waiter gets its 503 instead of hanging
            self._loop.call_soon_threadsafe(self._idle.put_nowait, slot)
        if broken:
            self._loop.call_soon_threadsafe(self._schedule_heal)

    def _schedule_heal(self) -> None:
        assert self._loop is not None
        if self._heal_timer is None and not self._closed:
            self._heal_timer = self._loop.call_later(self.respawn_backoff_s, self._heal)

    def _heal(self) -> None:
        """Retry starting the broken slots nobody holds (on the loop), so the pool recovers without traffic."""
        assert self._loop is not None and self._idle is not None
        self._heal_timer = None
        if self._closed:
            return
        idle = [self._idle.get_nowait() for _ in range(self._idle.qsize())]
        with self._lock:
            broken = [slot for slot in idle if slot in self._broken] + sorted(self._parked)
            self._parked.clear()
        for slot in idle:
            if slot not in broken:
                self._idle.put_nowait(slot)
        for slot in broken:  # the slot is owned by this retry until _release hands it back
            self._loop.run_in_executor(self._threads, self._revive_and_release, slot)

    def _sweep(self) -> None:
        """Replace the workers that died while idle (on the loop; the slots taken are owned by their revival)."""
        assert self._loop is not None and self._idle is not None
        if self._closed:
            return
        idle = [self._idle.get_nowait() for _ in range(self._idle.qsize())]
        with self._lock:
            broken = set(self._broken)
        for slot in idle:
            if slot in broken or self._workers[slot].alive():  # broken slots are the heal timer's
                self._idle.put_nowait(slot)
            else:
                self._loop.run_in_executor(self._threads, self._revive_and_release, slot)
        self._watch_timer = self._loop.call_later(self.watch_interval_s, self._sweep)

    def _revive_and_release(self, slot: int) -> None:
        try:
            self._revive(slot)
        finally:
            self._release(slot)

    def close(self) -> None:
        self._closed = True
        for timer in (self._heal_timer, self._watch_timer):
            if timer is not None:
                timer.cancel()
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            worker.stop()
        self._threads.shutdown(wait=False, cancel_futures=True)
