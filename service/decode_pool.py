"""A small pool of decoder processes with per-task timeouts and replacement of dead workers.

Why not ``concurrent.futures.ProcessPoolExecutor``: when one of its workers dies (a decoder
segfault, the OOM killer, ``kill -9``) the whole executor turns into ``BrokenProcessPool`` and
every queued and future task fails, and it cannot kill a single hung task. Here each worker
is one process with its own pipe, so a crash shows up as EOF on that pipe only, a hang as a
poll timeout on it; either way only that worker is killed and replaced and only its request
fails with a clear error.

Processes come from the ``forkserver`` context with the worker module preloaded: replacements
start in milliseconds, and nothing is ever forked from the server process after Paddle (with
its threads) is loaded. Blocking pipe calls run in a thread per worker, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from service import decode_worker
from service.errors import (
    DecoderCrashedError,
    DecodeTimeoutError,
    QueueFullError,
    UndecodableVideoError,
    VideoLimitExceededError,
)

log = logging.getLogger(__name__)

_CTX = mp.get_context("forkserver")
_CTX.set_forkserver_preload(["service.decode_worker"])


class _Worker:
    """One decoder process and the parent's end of its pipe."""

    def __init__(self, task: Callable[..., Any], memory_mb: int) -> None:
        self.conn, child = _CTX.Pipe(duplex=True)
        self.process = _CTX.Process(
            target=decode_worker.worker_main, args=(child, task, memory_mb), name="tsm-decoder", daemon=True)
        self.process.start()
        child.close()  # only the child holds it now, so its death reads as EOF here
        self.failure = "crashed"  # why it died, once it has: crashed, timeout or out_of_memory

    @property
    def pid(self) -> int:
        return self.process.pid or -1

    def call(self, args: tuple[Any, ...], timeout_s: float) -> Any:
        """Run one task; raises a :class:`UndecodableVideoError` kind on any failure."""
        try:
            self.conn.send(args)
            if not self.conn.poll(timeout_s):
                self.failure = "timeout"
                self.kill()
                raise DecodeTimeoutError(
                    f"decoding took longer than {timeout_s:g} s and was stopped", reason="timeout")
            reply = self.conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            self.process.join(timeout=1)
            raise DecoderCrashedError(
                f"the decoder process died while reading this video (exit code {self.process.exitcode})",
                reason="worker_crashed") from exc
        if reply[0] == "ok":
            return reply[1]
        _, kind, reason, text = reply
        if reason == "out_of_memory":  # the worker exits after this answer; wait, so it is replaced
            self.failure = reason
            self.process.join(timeout=5)
        cls = VideoLimitExceededError if kind == "limit" or reason == "out_of_memory" else UndecodableVideoError
        raise cls(text, reason=reason)

    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()

    def stop(self) -> None:
        """Ask politely, then kill."""
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.process.join(timeout=2)
        if self.process.is_alive():
            self.kill()
        else:
            self.conn.close()


class DecodePool:
    """``size`` decoder processes; :meth:`run` is awaited by requests, one task per worker at a time."""

    def __init__(self, size: int, timeout_s: float, memory_mb: int,
                 task: Callable[..., Any] = decode_worker.decode_task,
                 on_replace: Callable[[str], None] | None = None, queue_capacity: int | None = None) -> None:
        """``on_replace(reason)`` is called for each replaced worker (crashed, timeout, out_of_memory);
        at most ``queue_capacity`` requests wait for a free worker (more get 503 at once)."""
        self.size, self.timeout_s, self.memory_mb, self.task = size, timeout_s, memory_mb, task
        self.queue_capacity = queue_capacity
        self.waiting = 0
        self._on_replace = on_replace
        self._workers: list[_Worker] = []
        self._busy: dict[int, _Worker] = {}
        self._lock = threading.Lock()
        self._idle: asyncio.Queue[_Worker] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads = ThreadPoolExecutor(max_workers=size, thread_name_prefix="tsm-decode")
        self.replaced = 0

    def start(self) -> None:
        """Start the processes (blocking; call from the lifespan before serving)."""
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Queue()
        for _ in range(self.size):
            worker = _Worker(self.task, self.memory_mb)
            self._workers.append(worker)
            self._idle.put_nowait(worker)

    def pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._workers]

    def busy_pids(self) -> list[int]:
        """Pids of workers running a task now (tests use it to kill one mid-request)."""
        with self._lock:
            return [w.pid for w in self._busy.values()]

    def admit(self) -> None:
        """Raise the 503 :meth:`run` would, before a request spends time uploading (cheap overload refusal)."""
        assert self._idle is not None
        if self.queue_capacity is not None and self._idle.empty() and self.waiting >= self.queue_capacity:
            raise QueueFullError(f"{self.waiting} videos are already waiting for a decoder; retry shortly",
                                 retry_after_s=1)

    async def run(self, *args: Any) -> Any:
        """Run the task with ``args`` in a free worker; raises an :class:`UndecodableVideoError` kind."""
        assert self._idle is not None and self._loop is not None, "DecodePool.start() was not called"
        self.admit()  # overload shows here first when decoding is the bottleneck: refuse now, not at the deadline
        self.waiting += 1
        try:
            worker = await self._idle.get()
        finally:
            self.waiting -= 1
        # The thread owns the worker until it hands it back, so a cancelled request (deadline)
        # never returns a still-busy worker to the idle queue.
        return await self._loop.run_in_executor(self._threads, self._call_and_release, worker, args)

    def _call_and_release(self, worker: _Worker, args: tuple[Any, ...]) -> Any:
        with self._lock:
            self._busy[worker.pid] = worker
        try:
            return worker.call(args, self.timeout_s)
        finally:
            with self._lock:
                self._busy.pop(worker.pid, None)
            if not worker.alive():
                worker = self._replace(worker)
            assert self._loop is not None and self._idle is not None
            if not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._idle.put_nowait, worker)

    def _replace(self, dead: _Worker) -> _Worker:
        log.warning("decoder worker %d ended (%s, exit code %s); starting a replacement",
                    dead.pid, dead.failure, dead.process.exitcode)
        dead.conn.close()
        fresh = _Worker(self.task, self.memory_mb)
        with self._lock:
            self._workers = [fresh if w is dead else w for w in self._workers]
        self.replaced += 1
        if self._on_replace is not None:
            self._on_replace(dead.failure)
        return fresh

    def close(self) -> None:
        with self._lock:
            workers = list(self._workers)
            self._workers.clear()
        for worker in workers:
            worker.stop()
        self._threads.shutdown(wait=False, cancel_futures=True)
