"""Hand freed heap memory back to the operating system (glibc's ``malloc_trim``).

A hot swap builds the new version's predictor on a loading thread while the old one still serves from the event
loop's, so the old one's memory is freed into heaps the allocator then keeps, fragmented: the server's resident
size grew 3.7 MiB a swap (25 swaps of a small model, 386 -> 478 MiB); trimming once a version is released, 1.4
MiB a swap (386 -> 420 MiB). What is left is mostly Paddle's own allocator cache, which no trim reaches.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS). Looked up among the symbols the
    process has loaded: ``ctypes.util.find_library`` would start ``ldconfig``, from a server with Paddle's threads."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        log.info("this C library has no malloc_trim: memory freed by unloaded model versions stays with the "
                 "allocator")
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the heaps' free pages to the OS; True when the C library could."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
