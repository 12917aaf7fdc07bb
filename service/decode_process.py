"""One decoder process and the parent's end of its pipe: a task, its timeout, and how it failed.

Processes come from the ``forkserver`` context with the worker module preloaded: replacements start in
milliseconds, and nothing is ever forked from the server process after Paddle (with its threads) is loaded.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
from collections.abc import Callable
from typing import Any

from service import decode_worker
from service.errors import DecoderCrashedError, DecodeTimeoutError, UndecodableVideoError, VideoLimitExceededError

CONTEXT = mp.get_context("forkserver")
CONTEXT.set_forkserver_preload(["service.decode_worker"])
log = logging.getLogger(__name__)


class DecoderProcess:
    """One decoder process and the parent's end of its pipe."""

    def __init__(self, task: Callable[..., Any], memory_mb: int) -> None:
        self.conn, child = CONTEXT.Pipe(duplex=True)
        try:
            self.process = CONTEXT.Process(
                target=decode_worker.worker_main, args=(child, task, memory_mb), name="tsm-decoder", daemon=True)
            self.process.start()
        except BaseException:
            self.conn.close()  # a refused start must not leak the pipe (out of descriptors is one cause)
            raise
        finally:
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
        _, kind, reason, text, *trace = reply
        if trace:  # in the server's log, in its format and with the request's id
            log.warning("a decoder failed in a way no decoder is known to (%s):\n%s", text, trace[0].rstrip())
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
