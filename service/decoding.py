"""Video decoding behind one interface: decord first, PyAV for files decord can't read.

Both training's evaluation and the service read clips through :func:`read_clip`, so the
pixels fed to the network are the same on both paths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
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
    rotation: int = 0
    """Display rotation applied to the frames, degrees counter-clockwise (0, 90, 180, 270)."""

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


@dataclass(frozen=True)
class VideoProbe:
    """Container facts read without decoding the stream (duration in s, size in coded pixels)."""

    width: int
    height: int
    duration_s: float
    rotation: int


def probe_video(path: Path) -> VideoProbe:
    """Read size, duration and display rotation with PyAV (decodes at most one frame).

    Phones store portrait videos as landscape frames plus a display matrix; decord 0.6
    applies it, PyAV does not, so :func:`read_frames` rotates PyAV's frames itself.
    """
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DecodeError(f"{path.name}: the file has no video stream", "no_video_stream")
            stream = container.streams.video[0]
            duration = 0.0
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000  # AV_TIME_BASE units
            rotation = 0
            for frame in container.decode(stream):
                rotation = _quarter_turns(frame.rotation) * 90
                break
            width, height = stream.codec_context.width, stream.codec_context.height
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"{path.name}: the file is not a readable video ({exc})") from exc
    return VideoProbe(int(width), int(height), duration, rotation)


def _quarter_turns(degrees: float | int | None) -> int:
    """Counter-clockwise display rotation in degrees -> quarter turns 0..3 (nearest)."""
    return round((degrees or 0) / 90) % 4


def rotate_frames(frames: np.ndarray, rotation: int) -> np.ndarray:
    """uint8 [T, H, W, 3] rotated ``rotation`` degrees counter-clockwise (a multiple of 90)."""
    turns = _quarter_turns(rotation)
    if turns == 0:
        return frames
    return np.ascontiguousarray(np.rot90(frames, k=turns, axes=(1, 2)))


def read_frames(path: Path, pick: IndexRule) -> tuple[np.ndarray, VideoInfo, list[int]]:
    """decord, then PyAV if decord fails; raises :class:`DecodeError` if neither can decode.

    Frames come out upright: the container's display rotation is applied (``info.rotation``),
    and ``info.width``/``info.height`` are the displayed size.
    """
    try:
        frames, info, indices = read_frames_decord(path, pick)
    except DecodeError as first:
        try:
            frames, info, indices = read_frames_pyav(path, pick)
        except DecodeError as second:
            raise second from first
    rotation = probe_video(path).rotation
    if rotation and info.backend == "pyav":  # decord 0.6 applies the display matrix itself
        frames = rotate_frames(frames, rotation)
    return frames, replace(info, width=int(frames.shape[2]), height=int(frames.shape[1]), rotation=rotation), indices


def read_clip(path: Path, spec: Preprocessing) -> tuple[np.ndarray, VideoInfo, list[int]]:
    """The test-time clip of ``path``: uint8 [num_seg, H, W, 3] at the manifest's sampling rule."""
    return read_frames(path, lambda count: test_indices(count, spec.num_seg, spec.sampling))
