"""Video decoding behind one interface: decord first, PyAV for files decord can't read.

Both training's evaluation and the service read clips through :func:`read_clip`, so the
pixels fed to the network are the same on both paths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.contract.manifest import Preprocessing
from service.contract.sampling import test_indices


class DecodeError(Exception):
    """The file is not a decodable video; ``reason`` is a short bounded label for metrics."""

    def __init__(self, message: str, reason: str = "undecodable") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class VideoInfo:
    """What the decoder found: frame count, rate (frames/s), size in pixels, duration (s)."""

    num_frames: int
    fps: float
    width: int
    height: int
    backend: str

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


IndexRule = Callable[[int], Sequence[int]]


def read_frames_decord(path: Path, pick: IndexRule) -> tuple[np.ndarray, VideoInfo, list[int]]:
    """Decode the frames ``pick(num_frames)`` with decord -> uint8 [T, H, W, 3] RGB."""
    import decord

    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        count = len(reader)
        if count < 1:
            raise DecodeError(f"{path.name}: the video stream has no frames", "no_frames")
        indices = [int(i) for i in pick(count)]
        frames = reader.get_batch(indices).asnumpy()
        fps = float(reader.get_avg_fps() or 0.0)
    except DecodeError:
        raise
    except Exception as exc:  # decord raises its own DECORDError and RuntimeError variants
        raise DecodeError(f"{path.name}: decord could not decode the video ({exc})") from exc
    info = VideoInfo(count, fps, int(frames.shape[2]), int(frames.shape[1]), "decord")
    return frames, info, indices


def read_frames_pyav(path: Path, pick: IndexRule) -> tuple[np.ndarray, VideoInfo, list[int]]:
    """Decode every frame sequentially with PyAV, keeping those at ``pick(num_frames)``."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DecodeError(f"{path.name}: the file has no video stream", "no_video_stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"{path.name}: the video could not be decoded ({exc})") from exc
    if not decoded:
        raise DecodeError(f"{path.name}: the video stream has no frames", "no_frames")
    indices = [int(i) for i in pick(len(decoded))]
    frames = np.stack([decoded[i] for i in indices])
    info = VideoInfo(len(decoded), float(rate or 0.0), int(frames.shape[2]), int(frames.shape[1]), "pyav")
    return frames, info, indices


def read_frames(path: Path, pick: IndexRule) -> tuple[np.ndarray, VideoInfo, list[int]]:
    """decord, then PyAV if decord fails; raises :class:`DecodeError` if neither can decode."""
    try:
        return read_frames_decord(path, pick)
    except DecodeError as first:
        try:
            return read_frames_pyav(path, pick)
        except DecodeError as second:
            raise second from first


def read_clip(path: Path, spec: Preprocessing) -> tuple[np.ndarray, VideoInfo, list[int]]:
    """The test-time clip of ``path``: uint8 [num_seg, H, W, 3] at the manifest's sampling rule."""
    return read_frames(path, lambda count: test_indices(count, spec.num_seg, spec.sampling))
