"""Sparse decoding: only the frames a clip needs and the frames they depend on, with the pixels of a full decode.

A clip keeps 8 of a few hundred frames. Two facts of the codec let most of the rest go undecoded without changing a
single output pixel: a frame that no other frame references (a non-reference B-frame) can be dropped unless it is one
we keep, and decoding can restart at any keyframe, so frames between two kept ones are skipped whenever a keyframe
lies between them. On a 10 s 720p H.264 clip this decodes about half the frames decord decodes.

Frames are numbered in presentation order from the container's packet index, as decord numbers them, and matched by
timestamp. Only 8-bit 4:2:0 streams take this path: for those the RGB pixels equal decord's exactly (tested); other
formats, and streams whose timestamps can't index the frames, raise :class:`SparseUnsupported` so the caller uses
decord.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from service.decoding import DecodeError, IndexRule, LimitExceeded, VideoInfo, quarter_turns, why

# Pixel formats whose RGB conversion is tested to equal decord's (FFmpeg 4 inside decord, PyAV's own FFmpeg here).
SPARSE_PIX_FMTS = frozenset({"yuv420p", "yuvj420p"})


class SparseUnsupported(Exception):  # noqa: N818 - a signal to use another decoder, not an error of the file
    """This stream can't be decoded sparsely with exact pixels; decode it another way."""


def _index(container: av.container.InputContainer, stream: av.VideoStream) -> tuple[list[int], list[int]]:
    """(every frame's pts in presentation order, keyframe pts in order), read from packets without decoding."""
    pts: list[int] = []
    keys: list[int] = []
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream marker
            continue
        if packet.pts is None:
            raise SparseUnsupported("a packet has no presentation timestamp")
        pts.append(packet.pts)
        if packet.is_keyframe:
            keys.append(packet.pts)
    pts.sort()
    if len(set(pts)) != len(pts):
        raise SparseUnsupported("two packets share a presentation timestamp")
    return pts, sorted(keys)


class _Decoder:
    """Decodes forward from a keyframe, dropping unkept non-reference frames, and keeps the wanted ones as RGB."""

    def __init__(self, path: Path, container: av.container.InputContainer, wanted: set[int],
                 max_pixels: int | None) -> None:
        self.path, self.container, self.wanted, self.max_pixels = path, container, wanted, max_pixels
        self.stream = container.streams.video[0]
        self.stream.thread_count = 1  # one decoder per worker process; the pool provides the parallelism
        self.kept: dict[int, np.ndarray] = {}
        self.size: tuple[int, int] | None = None
        self.rotation = 0
        self.decoded = 0

    def restart_at(self, keyframe_pts: int) -> Iterator[av.Packet]:
        """Seek to the keyframe at ``keyframe_pts`` and return the packets from there on."""
        self.container.seek(keyframe_pts, stream=self.stream, backward=True, any_frame=False)
        self.stream.codec_context.flush_buffers()
        return self.container.demux(self.stream)

    def feed(self, packet: av.Packet | None) -> None:
        """Decode one packet (``None`` drains the decoder at the end of the stream)."""
        ctx = self.stream.codec_context
        ctx.skip_frame = "DEFAULT" if packet is None or packet.pts in self.wanted else "NONREF"
        for frame in ctx.decode(packet):
            self._check(frame)
            if frame.pts is None:
                raise SparseUnsupported("a decoded frame has no presentation timestamp")
            if frame.pts in self.wanted and frame.pts not in self.kept:
                self.kept[frame.pts] = frame.to_ndarray(format="rgb24")
                self.rotation = quarter_turns(frame.rotation) * 90

    def _check(self, frame: av.VideoFrame) -> None:
        self.decoded += 1
        if self.max_pixels is not None and frame.width * frame.height > self.max_pixels:
            raise LimitExceeded(f"{self.path.name}: a frame of {frame.width}x{frame.height} exceeds the limit of "
                                f"{self.max_pixels} pixels", "too_large")
        if self.size is not None and self.size != (frame.width, frame.height):
            raise DecodeError(f"{self.path.name}: the frame size changes mid-stream from {self.size[0]}x"
                              f"{self.size[1]} to {frame.width}x{frame.height}", "size_changed")
        self.size = (frame.width, frame.height)
        if frame.format.name not in SPARSE_PIX_FMTS:
            raise SparseUnsupported(f"pixel format {frame.format.name}")


def _decode(dec: _Decoder, targets: list[int], keys: list[int]) -> None:
    """Keep every pts in ``targets`` (sorted): restart at a target's keyframe when it lies beyond the current one."""
    packets: Iterator[av.Packet] | None = None
    current_key: int | None = None
    for target in targets:
        key = keys[bisect.bisect_right(keys, target) - 1] if keys and keys[0] <= target else None
        if packets is None or (key is not None and current_key is not None and key > current_key):
            if key is None:
                raise SparseUnsupported("a wanted frame comes before the first keyframe")
            packets, current_key = dec.restart_at(key), key
        while target not in dec.kept:
            packet = next(packets, None)
            if packet is None or packet.size == 0:
                dec.feed(None)
                break
            if packet.is_keyframe and packet.pts is not None:
                current_key = max(current_key or packet.pts, packet.pts)
            dec.feed(packet)
        if target not in dec.kept:
            raise DecodeError(f"{dec.path.name}: frame at pts {target} could not be decoded", "unstable")


def read_frames_sparse(path: Path, pick: IndexRule, *,
                       max_pixels: int | None = None) -> tuple[np.ndarray, VideoInfo, list[int]]:
    """The frames ``pick(num_frames)`` -> (uint8 [T, H, W, 3] RGB, not yet rotated; info; indices).

    ``info.rotation`` is the display rotation the caller still has to apply. Raises :class:`SparseUnsupported`
    where this path can't promise decord's pixels, :class:`DecodeError` where the file is broken.
    """
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise SparseUnsupported("no video stream")
            stream = container.streams.video[0]
            if stream.codec_context.format is None or stream.codec_context.format.name not in SPARSE_PIX_FMTS:
                raise SparseUnsupported("pixel format")
            rate = float(stream.average_rate or stream.guessed_rate or 0.0)
            pts, keys = _index(container, stream)
            if not pts:
                raise SparseUnsupported("no frames in the packet index")
            indices = [int(i) for i in pick(len(pts))]
            dec = _Decoder(path, container, {pts[i] for i in indices}, max_pixels)
            _decode(dec, sorted(dec.wanted), keys)
    except (SparseUnsupported, DecodeError):
        raise
    except Exception as exc:
        raise DecodeError(f"{path.name}: the video could not be decoded ({why(exc, path)})") from exc
    frames = np.stack([dec.kept[pts[i]] for i in indices])
    info = VideoInfo(len(pts), rate, int(frames.shape[2]), int(frames.shape[1]), "pyav-sparse", dec.rotation)
    return frames, info, indices
