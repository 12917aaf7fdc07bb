"""What runs inside a decoder worker process: decode, sample and preprocess one video.

Imported by the worker processes, so it must stay free of Paddle (a ~3 s import and a
multi-threaded runtime we never want in a decoder) and of anything from the web layer.
"""

from __future__ import annotations

import resource
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from service.contract.manifest import Preprocessing
from service.contract.preprocess import preprocess_clip
from service.decode_errors import DecodeError, LimitExceeded
from service.decoding import VideoInfo, read_clip
from service.probing import measured_duration_s, probe_video


@dataclass(frozen=True)
class DecodeLimits:
    """Refuse videos over them: duration in seconds, frame area in pixels (from the header before decoding, then
    from what the decoders found)."""

    max_duration_s: float
    max_pixels: int


@dataclass(frozen=True)
class DecodedClip:
    """One preprocessed clip: float32 [num_seg * spatial_crops, 3, crop, crop], the video facts and indices."""

    clip: np.ndarray
    info: VideoInfo
    indices: list[int]


def decode_task(path: str, spec: Preprocessing, limits: DecodeLimits) -> DecodedClip:
    """The whole numeric path up to the network: ``read_clip`` then ``preprocess_clip``."""
    video = Path(path)
    probe = probe_video(video)
    if probe.duration_s > limits.max_duration_s:  # a header may overstate: the packets' timestamps decide
        _check_duration(measured_duration_s(video) or probe.duration_s, limits)
    if probe.width * probe.height > limits.max_pixels:
        raise LimitExceeded(
            f"frames of {probe.width}x{probe.height} exceed the limit of {limits.max_pixels} pixels", "too_large")
    # uint8 [num_seg, H, W, 3] RGB, upright
    frames, info, indices = read_clip(video, spec, max_pixels=limits.max_pixels, rotation=probe.rotation)
    _check_duration(info.duration_s, limits)  # from the decoded stream's timestamps: a header may understate too
    try:
        clip = preprocess_clip(frames, spec)  # float32 [num_seg * spatial_crops, 3, crop, crop]
    except ValueError as exc:  # e.g. a frame smaller than the crop after scaling
        raise DecodeError(f"{video.name}: the frames cannot be preprocessed ({exc})", "preprocess") from exc
    return DecodedClip(clip, info, indices)


def _check_duration(seconds: float, limits: DecodeLimits) -> None:
    if seconds > limits.max_duration_s:
        raise LimitExceeded(
            f"the video lasts {seconds:.1f} s, over the limit of {limits.max_duration_s:g} s", "too_long")


def warm_imports() -> None:
    """Import the decoders once at start so the first request doesn't pay for it."""
    import av  # noqa: F401
    import decord  # noqa: F401


def worker_main(conn: Connection, task: Callable[..., Any], memory_mb: int) -> None:
    """Serve tasks from ``conn`` until it closes: reply ``("ok", result)`` or ``("error", kind, reason, text)``,
    plus the traceback of an exception no decoder is known to raise.

    The address-space limit turns a runaway allocation into a MemoryError here (the worker
    answers, then exits) or, inside native code, a dead process; either way the pool replaces
    it, instead of the host swapping.
    """
    # Ctrl+C in a terminal reaches the whole process group: the server ends its workers itself (a pipe's close,
    # then a kill), so a worker ignores it instead of printing a KeyboardInterrupt traceback mid-shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    warm_imports()
    while True:
        try:
            args = conn.recv()
        except (EOFError, OSError):
            return
        if args is None:
            return
        retire = False
        try:
            reply: tuple[Any, ...] = ("ok", task(*args))
        except LimitExceeded as exc:
            reply = ("error", "limit", exc.reason, str(exc))
        except DecodeError as exc:
            reply = ("error", "decode", exc.reason, str(exc))
        except MemoryError:
            # The heap may be fragmented or a native library half-initialised: answer, then exit
            # so that the pool starts a clean replacement.
            reply = ("error", "decode", "out_of_memory", "decoding needed more memory than a worker may use")
            retire = True
        except Exception as exc:  # any other decoder failure is still the file's, not the server's
            # ...most likely; its traceback goes to the server's log, so that a bug of ours does not pass unseen
            # (logged here, it was bare text on stderr among the JSON records).
            reply = ("error", "decode", "undecodable", f"the video could not be decoded ({type(exc).__name__})",
                     traceback.format_exc())
        conn.send(reply)
        if retire:
            return
