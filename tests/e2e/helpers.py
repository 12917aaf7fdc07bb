"""Helpers of the end-to-end tests: decode tasks for decoder workers (importable by the forkserver children),
waiting for a condition, reading a metric."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from service.decode_worker import DecodedClip, decode_task


def slow_decode(*args: Any) -> DecodedClip:
    """The real decode task, after 3 s: long enough to kill the worker or time it out mid-task."""
    time.sleep(3)
    return decode_task(*args)


HOLD = b"HOLD"
HOLD_MAX_S = 600
"""Longest a held decode waits for its ``go`` file: far beyond need, as the test touches it in a ``finally``."""


def faulty_decode(path: str, *args: Any) -> DecodedClip:
    """The real decode task, unless the upload starts with a fault marker (runs in a decoder worker).

    ``HOLD<folder>\\n`` waits (at most ``HOLD_MAX_S``) until ``<folder>/go`` exists, then fails to decode
    the upload (it is no video): a decoder kept busy for exactly as long as the test wants."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(HOLD):
        go = Path(head[len(HOLD):].split(b"\n", 1)[0].decode()) / "go"
        deadline = time.monotonic() + HOLD_MAX_S
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    if head.startswith(b"CRASH"):
        os.kill(os.getpid(), signal.SIGKILL)
    if head.startswith(b"HANG"):
        time.sleep(60)
    if head.startswith(b"HOG"):
        blob = bytearray(8 << 30)  # 8 GiB: over the worker's address-space cap
        return blob  # type: ignore[return-value]
    return decode_task(path, *args)


def wait_until(condition: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
