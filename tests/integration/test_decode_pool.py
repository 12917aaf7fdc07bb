"""The decode pool when the OS refuses to start a replacement worker: the slot is kept, no request hangs.

Real worker processes; only the process start is made to fail (``OSError(EMFILE)``, as when the
server is out of file descriptors), by patching the multiprocessing context the pool starts them from.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import pytest

from service import decode_process
from service.decode_pool import DecodePool
from service.errors import DecoderCrashedError, DecoderUnavailableError, UndecodableVideoError

BACKOFF_S = 0.3
WATCH_S = 0.2
HANG_GUARD_S = 10.0  # far above any answer the pool should give; reaching it means a request hung


def echo_or_die(word: str) -> str:
    """Runs in a decoder worker: ``die<seconds>`` kills the worker (as a decoder segfault would) after a pause,
    ``bug`` raises an exception no decoder raises, ``sleep<seconds>`` hangs that long."""
    if word == "bug":
        raise KeyError(word)
    if word.startswith("sleep"):
        time.sleep(float(word[5:]))
    if word.startswith("die"):
        time.sleep(float(word[3:] or 0))
        os.kill(os.getpid(), signal.SIGKILL)
    return word


def refused_start(*_: Any, **__: Any) -> NoReturn:
    raise OSError(errno.EMFILE, "Too many open files")


class Refusal:
    """Switches the OS's refusal to start decoder processes on and off."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch

    def on(self) -> None:
        self.monkeypatch.setattr(decode_process.CONTEXT, "Process", refused_start)

    def off(self) -> None:
        self.monkeypatch.undo()


@pytest.fixture
def refusal(monkeypatch: pytest.MonkeyPatch) -> Iterator[Refusal]:
    yield Refusal(monkeypatch)


async def until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.02)


def with_pool(size: int, scenario: Callable[[DecodePool], Any]) -> None:
    async def main() -> None:
        pool = DecodePool(size, timeout_s=5, memory_mb=1024, task=echo_or_die, respawn_backoff_s=BACKOFF_S,
                          watch_interval_s=WATCH_S)
        pool.start()
        try:
            await scenario(pool)
        finally:
            pool.close()

    asyncio.run(main())


def test_refused_replacement_keeps_the_slot_and_recovers_without_traffic(refusal: Refusal) -> None:
    async def scenario(pool: DecodePool) -> None:
        assert await pool.run("hi") == "hi"
        refusal.on()
        with pytest.raises(DecoderCrashedError):  # the crash is the request's answer, not the refused restart
            await asyncio.wait_for(pool.run("die"), HANG_GUARD_S)
        assert pool.usable() == 0
        start = time.monotonic()
        with pytest.raises(DecoderUnavailableError) as refused:
            await asyncio.wait_for(pool.run("hi"), HANG_GUARD_S)
        assert time.monotonic() - start < 1.0 and refused.value.status == 503 and refused.value.retry_after_s
        await asyncio.sleep(3 * BACKOFF_S)  # retries meanwhile fail too; the slot must survive them
        assert pool.usable() == 0 and len(pool.pids()) == 1
        refusal.off()
        await until(lambda: pool.usable() == 1, HANG_GUARD_S)  # no request needed to recover
        assert await asyncio.wait_for(pool.run("back"), HANG_GUARD_S) == "back"
        assert pool.replaced == 1

    with_pool(1, scenario)


def test_waiter_gets_503_at_once_when_the_last_worker_cannot_be_replaced(refusal: Refusal) -> None:
    async def scenario(pool: DecodePool) -> None:
        refusal.on()
        crashing = asyncio.ensure_future(pool.run("die0.5"))
        await until(lambda: bool(pool.busy_pids()), HANG_GUARD_S)
        waiting = asyncio.ensure_future(pool.run("hi"))  # queued behind the worker about to die
        await until(lambda: pool.waiting == 1, HANG_GUARD_S)
        with pytest.raises(DecoderCrashedError):
            await asyncio.wait_for(crashing, HANG_GUARD_S)
        with pytest.raises(DecoderUnavailableError):
            await asyncio.wait_for(waiting, HANG_GUARD_S)
        with pytest.raises(DecoderUnavailableError):  # newcomers are refused before they wait at all
            pool.admit()

    with_pool(1, scenario)


def test_broken_slot_is_kept_aside_while_another_worker_serves(refusal: Refusal) -> None:
    async def scenario(pool: DecodePool) -> None:
        refusal.on()
        with pytest.raises(DecoderCrashedError):
            await asyncio.wait_for(pool.run("die"), HANG_GUARD_S)
        assert pool.usable() == 1
        words = [f"w{i}" for i in range(6)]
        results = await asyncio.wait_for(asyncio.gather(*(pool.run(w) for w in words)), HANG_GUARD_S)
        assert results == words  # all served by the one live worker, none refused for the broken slot
        refusal.off()
        await until(lambda: pool.usable() == 2, HANG_GUARD_S)
        assert len(set(await asyncio.gather(*(pool.run(w) for w in words)))) == len(words)

    with_pool(2, scenario)


def test_a_slot_taken_while_the_pool_closes_says_shutting_down_not_refused() -> None:
    """After close() nothing new starts: a request that got a slot then is told the server is shutting down (503
    not-ready), not that the system refused a decoder process."""
    from service.errors import NotReadyError

    async def scenario() -> None:
        pool = DecodePool(1, 5.0, 1024, task=echo_or_die, respawn_backoff_s=BACKOFF_S)
        pool.start()
        pool.close()
        with pytest.raises(NotReadyError, match="shutting down"):
            pool._call_and_release(0, ("hello",))

    asyncio.run(scenario())


def test_a_worker_that_dies_idle_is_replaced_without_traffic() -> None:
    """Killed while idle (the OOM killer, ``kill -9``): replaced by the pool's sweep, not by the next request."""
    async def scenario(pool: DecodePool) -> None:
        victim = pool.pids()[0]
        os.kill(victim, signal.SIGKILL)
        await until(lambda: pool.replaced == 1, HANG_GUARD_S)
        assert victim not in pool.pids() and pool.usable() == 2
        assert sorted(await asyncio.gather(pool.run("a"), pool.run("b"))) == ["a", "b"]
        assert pool.replaced == 1  # the requests found live workers: nothing restarted on their time

    with_pool(2, scenario)


def test_a_worker_that_dies_idle_while_none_can_start_makes_the_pool_unusable(refusal: Refusal) -> None:
    """What /readyz reports: a dead idle worker whose replacement the OS refuses is not counted as usable."""
    async def scenario(pool: DecodePool) -> None:
        refusal.on()
        os.kill(pool.pids()[0], signal.SIGKILL)
        await until(lambda: pool.usable() == 0, HANG_GUARD_S)
        refusal.off()
        await until(lambda: pool.usable() == 1, HANG_GUARD_S)
        assert await asyncio.wait_for(pool.run("back"), HANG_GUARD_S) == "back" and pool.replaced == 1

    with_pool(1, scenario)


def test_a_request_cancelled_before_a_thread_takes_its_job_gives_the_slot_back() -> None:
    """The previous job hands its slot back just before its thread is free, so the next request's job may wait
    for a thread; a request cancelled then (its client gone, its deadline) lost the slot for good: a wedged pool
    answering every request 504 while /readyz said ready (found with 5 clients hanging up 20-80 ms in)."""
    import threading

    async def scenario(pool: DecodePool) -> None:
        finishing = threading.Event()
        pool._threads.submit(finishing.wait)  # the pool's only thread, still busy after the slot went back
        request = asyncio.create_task(pool.run("hi"))
        await until(lambda: pool._idle is not None and pool._idle.qsize() == 0, HANG_GUARD_S)  # slot taken
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        finishing.set()
        assert await asyncio.wait_for(pool.run("back"), HANG_GUARD_S) == "back"  # hung with the slot lost
        await until(lambda: pool._idle is not None and pool._idle.qsize() == 1, HANG_GUARD_S)

    with_pool(1, scenario)


def test_a_request_cancelled_while_its_job_runs_leaves_the_slot_to_the_job() -> None:
    """Cancelled mid-decode, the job still owns its slot: it comes back when the worker is done, not before."""
    async def scenario(pool: DecodePool) -> None:
        request = asyncio.create_task(pool.run("die0.5"))  # the worker is busy for half a second, then dies
        await until(lambda: bool(pool.busy_pids()), HANG_GUARD_S)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        assert pool._idle is not None and pool._idle.qsize() == 0  # not handed back while its worker is busy
        assert await asyncio.wait_for(pool.run("after"), HANG_GUARD_S) == "after"  # on the replacement
        assert pool.replaced == 1

    with_pool(1, scenario)


def test_an_unexpected_error_in_a_worker_is_logged_by_the_server_with_its_traceback_and_request_id(
        caplog: pytest.LogCaptureFixture) -> None:
    """The worker logged it itself: bare text on its stderr among the server's JSON records, with no request id."""
    import logging

    from service.logs import request_id_var

    seen: list[tuple[str, str | None]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), request_id_var.get()))

    async def scenario(pool: DecodePool) -> None:
        request_id_var.set("req-7")
        with pytest.raises(UndecodableVideoError) as failed:
            await asyncio.wait_for(pool.run("bug"), HANG_GUARD_S)
        assert failed.value.reason == "undecodable" and "(KeyError)" in str(failed.value)
        assert await asyncio.wait_for(pool.run("after"), HANG_GUARD_S) == "after"  # the worker serves on

    keep = Keep()
    logging.getLogger("service.decode_process").addHandler(keep)
    try:
        with caplog.at_level(logging.WARNING, "service.decode_process"):
            with_pool(1, scenario)
    finally:
        logging.getLogger("service.decode_process").removeHandler(keep)
    assert len(seen) == 1, seen
    message, request_id = seen[0]
    assert request_id == "req-7"
    assert "Traceback (most recent call last)" in message and "KeyError: 'bug'" in message, message


def test_a_hung_decode_is_stopped_at_its_timeout_and_its_worker_replaced() -> None:
    """TSM_DECODE_TIMEOUT_S bounds how long a video holds a decoder: a hang is cut there, not at some multiple, and
    the worker is replaced."""
    from service.errors import DecodeTimeoutError

    async def main() -> float:
        pool = DecodePool(1, timeout_s=5, memory_mb=1024, task=echo_or_die)
        pool.start()
        try:
            await asyncio.wait_for(pool.run("warm"), HANG_GUARD_S)  # the worker is up and has imported its modules
            pool.timeout_s = 1.0  # (a worker's start, its imports, would count against so short a timeout)
            start = time.monotonic()
            with pytest.raises(DecodeTimeoutError):
                await asyncio.wait_for(pool.run("sleep30"), HANG_GUARD_S)
            took = time.monotonic() - start
            await until(lambda: pool.replaced == 1, HANG_GUARD_S)
            return took
        finally:
            pool.close()

    took = asyncio.run(main())
    assert 1.0 <= took < 1.8, took  # twice the timeout would not pass
