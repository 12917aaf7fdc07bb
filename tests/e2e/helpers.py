"""Decode tasks for decoder workers in tests (importable by the forkserver children)."""

from __future__ import annotations

import time
from typing import Any

from service.decode_worker import DecodedClip, decode_task


def slow_decode(*args: Any) -> DecodedClip:
    """The real decode task, after 3 s: long enough to kill the worker or time it out mid-task."""
    time.sleep(3)
    return decode_task(*args)
