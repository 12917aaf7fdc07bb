"""Dynamic batching for one model version: every request owns a future.

Clips are collected until ``max_batch_size`` clips wait or the oldest has waited
``max_queue_delay_ms``, whichever comes first, then run as one batch in a dedicated
inference thread (off the event loop). The queue is bounded: a clip over capacity is
refused at once (503) rather than timing out later. A failed batch fails each of its
futures; a batch whose output row count differs from its input fails them all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.errors import DeadlineExceededError, InferenceFailedError, NotReadyError, QueueFullError, counted

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPolicy:
    """When a batch starts: ``max_batch_size`` clips or ``max_queue_delay_ms`` of waiting; ``queue_capacity`` clips."""

    max_batch_size: int = 8
    max_queue_delay_ms: float = 10.0
    queue_capacity: int = 64


@dataclass(frozen=True)
class BatchResult:
    """One request's share of a batch: its output row, seconds queued and in inference, batch size."""

    output: np.ndarray
    queue_s: float
    inference_s: float
    batch_size: int


@dataclass
class _Item:
    clip: np.ndarray
    future: asyncio.Future[BatchResult]
    enqueued: float
    deadline: float


class DynamicBatcher:
    """``run_batch(float32 [N, ...]) -> [N, K]`` is called with up to ``max_batch_size`` stacked clips."""

    def __init__(self, run_batch: Callable[[np.ndarray], np.ndarray], policy: BatchPolicy, name: str = "",
                 on_batch: Callable[[int], None] | None = None,
                 on_depth: Callable[[int], None] | None = None, executor: ThreadPoolExecutor | None = None) -> None:
        self.policy, self.name = policy, name
        self._run_batch = run_batch
        self._on_batch, self._on_depth = on_batch, on_depth
        self._pending: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        # One thread per version: the predictor was built and warmed up on it (oneDNN caches are per thread).
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tsm-infer-{name}")
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Clips still waiting for a batch; those whose request gave up do not count."""
        self._drop_abandoned()
        return len(self._pending)

    def _drop_abandoned(self) -> None:
        """Forget queued clips whose request has gone (its deadline, its client): while a long batch runs they would
        fill the queue and refuse live requests as 'queue full'."""
        if any(item.future.done() for item in self._pending):
            self._pending = deque(item for item in self._pending if not item.future.done())

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    def admit(self) -> None:
        """Raise the refusal :meth:`submit` would now: a request checks before it spends a decoder on its clip."""
        if self._closing:
            raise NotReadyError(f"{self.name} is shutting down; retry", retry_after_s=1)
        if self.depth >= self.policy.queue_capacity:
            raise QueueFullError(
                f"{counted(self.policy.queue_capacity, 'clip')} already waiting for {self.name}; retry shortly",
                retry_after_s=1)

    def submit(self, clip: np.ndarray, deadline: float) -> asyncio.Future[BatchResult]:
        """Queue one clip (``deadline`` on the ``time.monotonic`` clock); raises QueueFullError when full."""
        self.admit()
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self._pending.append(_Item(clip, future, time.monotonic(), deadline))
        # A request that gives up (its future cancelled) leaves the gauge at once; answered ones left it in _take.
        future.add_done_callback(lambda done: done.cancelled() and self._report_depth())
        self._report_depth()
        self._wakeup.set()
        return future

    async def close(self) -> None:
        """Stop taking clips, finish the queued ones, stop the inference thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        while True:
            while not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._wait_for_batch()
            items = self._take()
            if not items:
                continue
            try:
                await self._run(items)
            except Exception as exc:  # the loop must outlive any batch: when it ends, every later request hangs
                self._fail(items, exc)

    async def _wait_for_batch(self) -> None:
        """Wait until the batch is full, the oldest clip's delay is spent, or we are closing."""
        until = self._pending[0].enqueued + self.policy.max_queue_delay_ms / 1000
        while len(self._pending) < self.policy.max_batch_size and not self._closing:
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Item]:
        """Pop up to a batch of live items; expired ones fail with 504, cancelled ones are dropped."""
        now, items = time.monotonic(), []
        while self._pending and len(items) < self.policy.max_batch_size:
            item = self._pending.popleft()
            if item.future.done():  # the request gave up (its deadline or a client disconnect)
                continue
            if now >= item.deadline:
                item.future.set_exception(DeadlineExceededError("the request deadline passed while queued"))
                continue
            items.append(item)
        self._report_depth()
        return items

    async def _run(self, items: list[_Item]) -> None:
        start = time.monotonic()
        batch = np.stack([item.clip for item in items])  # float32 [N, num_seg * spatial_crops, 3, crop, crop]
        outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._run_batch, batch)
        if len(outputs) != len(items):
            raise RuntimeError(f"the model returned {len(outputs)} rows for a batch of {len(items)}")
        elapsed = time.monotonic() - start
        for item, row in zip(items, outputs, strict=True):
            if not item.future.done():
                item.future.set_result(BatchResult(row, start - item.enqueued, elapsed, len(items)))
        if self._on_batch is not None:
            self._on_batch(len(items))

    def _fail(self, items: list[_Item], exc: Exception) -> None:
        """Fail the batch's requests with a 503 they may retry; the cause goes to the server's log."""
        log.exception("%s: inference failed for a batch of %d", self.name, len(items), exc_info=exc)
        error = InferenceFailedError(f"inference failed for a batch of {len(items)}: {exc}", retry_after_s=1)
        for item in items:
            if not item.future.done():
                item.future.set_exception(error)

    def _report_depth(self) -> None:
        if self._on_depth is not None:
            self._on_depth(self.depth)
