"""The dynamic batcher on its own, and the request pipeline around it: futures, failed batches, abandoned
clips, spent deadlines."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from service.batcher import BatchPolicy, BatchResult, DynamicBatcher
from service.decode_worker import DecodedClip
from service.decoding import VideoInfo
from service.errors import DeadlineExceededError, InferenceFailedError, QueueFullError

HANG_S = 10  # far above any answer here: a batcher whose loop died fails the test in seconds, not at pytest's 900


def run(coro):
    return asyncio.run(coro)


def test_batcher_batches_and_answers_each_future() -> None:
    calls: list[int] = []

    def model(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return batch.reshape(len(batch), -1)[:, :2] * 2

    async def main() -> list:
        b = DynamicBatcher(model, BatchPolicy(max_batch_size=3, max_queue_delay_ms=200, queue_capacity=10))
        b.start()
        futures = [b.submit(np.full((2, 2), i, np.float32), time.monotonic() + 5) for i in range(5)]
        results = await asyncio.wait_for(asyncio.gather(*futures), HANG_S)
        await asyncio.wait_for(b.close(), HANG_S)
        return results

    results = run(main())
    assert calls == [3, 2]
    assert [r.output.tolist() for r in results] == [[2 * i, 2 * i] for i in range(5)]
    assert [r.batch_size for r in results] == [3, 3, 3, 2, 2]


def test_a_lone_clip_waits_the_batching_delay_and_no_longer() -> None:
    """TSM_MAX_QUEUE_DELAY_MS bounds the wait for company: a lone clip runs when it is spent (each, of two in turn)."""
    async def main() -> list[BatchResult]:
        b = DynamicBatcher(lambda batch: batch.reshape(len(batch), -1), BatchPolicy(max_batch_size=4,
                                                                                    max_queue_delay_ms=1000))
        b.start()
        results = [await asyncio.wait_for(b.submit(np.zeros((1, 2), np.float32), time.monotonic() + 5), HANG_S)
                   for _ in range(2)]
        await asyncio.wait_for(b.close(), HANG_S)
        return results

    for result in run(main()):
        assert result.batch_size == 1 and 0.99 <= result.queue_s < 1.8, result.queue_s  # twice would not pass


def test_batcher_failed_batch_fails_every_future_and_queue_bound() -> None:
    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("device lost")

    async def main() -> None:
        b = DynamicBatcher(broken, BatchPolicy(max_batch_size=2, max_queue_delay_ms=50, queue_capacity=2))
        b.start()
        futures = [b.submit(np.zeros(1, np.float32), time.monotonic() + 5) for _ in range(2)]
        with pytest.raises(QueueFullError):
            b.submit(np.zeros(1, np.float32), time.monotonic() + 5)
        for f in futures:
            with pytest.raises(InferenceFailedError, match="device lost"):
                await asyncio.wait_for(f, HANG_S)
        expired = b.submit(np.zeros(1, np.float32), time.monotonic() - 1)
        with pytest.raises(DeadlineExceededError):
            await asyncio.wait_for(expired, HANG_S)
        await asyncio.wait_for(b.close(), HANG_S)

    run(main())


def test_batcher_wrong_row_count_fails_the_batch_and_keeps_going() -> None:
    """A model answering N-1 rows for N clips fails all N futures (no clip gets another's row), and the batcher's
    task survives to run the next batch."""
    calls: list[int] = []

    def short_once(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        rows = batch.reshape(len(batch), -1)[:, :2] * 2
        return rows[:-1] if len(calls) == 1 else rows

    async def main() -> tuple[list[BaseException | BatchResult], list[BatchResult], bool]:
        b = DynamicBatcher(short_once, BatchPolicy(max_batch_size=3, max_queue_delay_ms=100, queue_capacity=10))
        b.start()
        first = [b.submit(np.full((2, 2), i, np.float32), time.monotonic() + 5) for i in range(3)]
        failed = await asyncio.wait_for(asyncio.gather(*first, return_exceptions=True), 5)
        second = [b.submit(np.full((2, 2), i, np.float32), time.monotonic() + 5) for i in (7, 8)]
        results = await asyncio.wait_for(asyncio.gather(*second), 5)
        assert b._task is not None
        alive = not b._task.done()
        await asyncio.wait_for(b.close(), HANG_S)
        return failed, results, alive

    failed, results, alive = run(main())
    assert calls == [3, 2]
    assert all(isinstance(f, InferenceFailedError) for f in failed), failed
    for f in failed:
        assert str(f) == "inference failed for a batch of 3: the model returned 2 rows for a batch of 3"
        assert isinstance(f, InferenceFailedError) and f.status == 503 and f.retry_after_s == 1
    assert alive
    assert [r.output.tolist() for r in results] == [[14, 14], [16, 16]]
    assert [r.batch_size for r in results] == [2, 2]


def test_a_batch_that_fails_before_inference_fails_its_requests_and_the_loop_goes_on() -> None:
    """np.stack (a MemoryError; here clips that do not stack) sat outside the batch's try: the loop task ended,
    so every later request was admitted and never answered, and close() raised."""
    async def main() -> tuple[list[BaseException | BatchResult], BatchResult]:
        b = DynamicBatcher(lambda x: x.reshape(len(x), -1)[:, :3], BatchPolicy(4, 20, 64), "v1")
        b.start()
        far = time.monotonic() + 60
        bad = [b.submit(np.zeros(shape, np.float32), far) for shape in ((2, 3), (3, 3))]
        failed = await asyncio.wait_for(asyncio.gather(*bad, return_exceptions=True), 5)
        later = await asyncio.wait_for(b.submit(np.ones((2, 3), np.float32), far), 5)
        await asyncio.wait_for(b.close(), HANG_S)  # raised the loop's ValueError before
        return failed, later

    failed, later = run(main())
    assert [type(f) for f in failed] == [InferenceFailedError] * 2
    assert "all input arrays must have the same shape" in str(failed[0]) and failed[0].retry_after_s == 1
    assert later.output.tolist() == [1, 1, 1]


def test_requests_that_gave_up_neither_fill_the_queue_nor_the_depth_gauge() -> None:
    """While a long batch ran, queued clips whose requests had gone (deadline, client) still counted: a live request
    was refused 'queue full' by nobody, and the queue-depth gauge kept them until the batch ended."""
    reported: list[int] = []

    def slow(batch: np.ndarray) -> np.ndarray:
        time.sleep(0.5)
        return batch.reshape(len(batch), -1)[:, :1]

    async def main() -> None:
        b = DynamicBatcher(slow, BatchPolicy(max_batch_size=1, max_queue_delay_ms=0, queue_capacity=2),
                           on_depth=reported.append)
        b.start()
        far = time.monotonic() + 60
        running = b.submit(np.zeros(1, np.float32), far)
        await asyncio.sleep(0.1)  # taken into the running batch
        gave_up = [b.submit(np.zeros(1, np.float32), far) for _ in range(2)]
        with pytest.raises(QueueFullError):
            b.admit()
        for future in gave_up:
            future.cancel()
        await asyncio.sleep(0)  # the futures' callbacks
        assert b.depth == 0 and reported[-1] == 0  # during the batch, not after it
        b.admit()
        live = b.submit(np.ones(1, np.float32), far)
        assert (await asyncio.wait_for(live, 5)).output.tolist() == [1.0] and (await running).batch_size == 1
        await asyncio.wait_for(b.close(), HANG_S)

    run(main())


class _InstantPool:
    """A decode pool whose decode takes ``busy_s`` of the event loop's own time (a loaded loop), counted by run."""

    def __init__(self, busy_s: float) -> None:
        self.busy_s, self.calls = busy_s, 0

    async def run(self, *_: object) -> DecodedClip:
        self.calls += 1
        time.sleep(self.busy_s)  # blocks the loop: the deadline passes with no timer able to fire
        return DecodedClip(np.zeros((2, 3), np.float32), VideoInfo(8, 25.0, 64, 64, "fake"), [0])


@pytest.mark.parametrize(("deadline_s", "busy_s", "stage"), [(0.1, 0.15, "inference"), (-0.01, 0.0, "decoding")])
def test_a_spent_deadline_starts_nothing_more(deadline_s: float, busy_s: float, stage: str) -> None:
    """The clip was queued before the time left for inference was looked at: the request got its 504 with its
    clip still queued, to be run for nobody. On a deadline spent before decoding, the decode's coroutine was made
    and dropped ("coroutine ... was never awaited")."""
    import gc
    import warnings

    from service.metrics import Metrics
    from service.pipeline import Deadline, classify_file
    from service.upload import UploadedFile

    batches: list[int] = []

    async def main() -> tuple[int, int]:
        b = DynamicBatcher(lambda x: (batches.append(len(x)), np.zeros((len(x), 1), np.float32))[1],
                           BatchPolicy(1, 1, 64), "v1")
        b.start()
        mv = SimpleNamespace(manifest=SimpleNamespace(preprocessing=None, labels=["a"]), batcher=b, name="m",
                             version=1)
        pool = _InstantPool(busy_s)
        with pytest.raises(DeadlineExceededError, match=f"the request deadline passed before {stage}"):
            await classify_file(UploadedFile(Path("/nonexistent"), "x.mp4", "video/mp4"), mv, pool, None,
                                Metrics(process=False), Deadline(time.monotonic() + deadline_s), 1, "r", 0.0, 0.0)
        depth = b.depth
        await asyncio.wait_for(b.close(), HANG_S)
        return depth, pool.calls

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        depth, decodes = run(main())
        gc.collect()
    assert depth == 0 and batches == []
    assert decodes == (1 if stage == "inference" else 0)
    assert not [w for w in caught if "never awaited" in str(w.message)]
