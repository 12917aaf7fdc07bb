"""Real test videos written with PyAV/libx264 (no fixtures checked in)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def pattern_frames(num_frames: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """uint8 [T, H, W, 3]: a moving bright square over a colour gradient (asymmetric, so rotation shows)."""
    rng = np.random.default_rng(seed)
    base = np.zeros((height, width, 3), np.uint8)
    base[..., 0] = np.linspace(0, 200, width, dtype=np.uint8)[None, :]
    base[..., 1] = np.linspace(0, 200, height, dtype=np.uint8)[:, None]
    base[..., 2] = rng.integers(0, 60)
    frames = np.repeat(base[None], num_frames, axis=0)
    side = max(2, min(width, height) // 4)
    for t in range(num_frames):
        x = (t * 3) % max(1, width - side)
        frames[t, :side, x:x + side] = 255
    return frames


def write_mp4(path: Path, frames: np.ndarray, fps: int = 25, rotation: int | None = None) -> Path:
    """Encode uint8 [T, H, W, 3] RGB as H.264 (yuv420p, so H and W must be even) into ``path``."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps, 1))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "18"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_video(path: Path, num_frames: int = 24, width: int = 160, height: int = 120, seed: int = 0,
               rotation: int | None = None) -> Path:
    return write_mp4(path, pattern_frames(num_frames, width, height, seed), rotation=rotation)


def write_audio_only(path: Path) -> Path:
    """An M4A-like MP4 with one AAC audio stream and no video stream."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = np.zeros((1, 1024), np.float32)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
