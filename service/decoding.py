"""Video decoding behind one interface: sparse PyAV where pixels are exact, decord, PyAV for files decord can't read.

Both training's evaluation and the service read clips through :func:`read_clip`, so the
pixels fed to the network are the same on both paths.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from service.contract.manifest import Preprocessing
from service.contract.sampling import test_indices

if TYPE_CHECKING:
    import av

_ERRNO = re.compile(r"\[Errno -?\d+\] ")  # FFmpeg's AVERROR as an errno: a number no reader can use


class DecodeError(Exception):
    """The file is not a decodable video; ``reason`` is a short bounded label for metrics."""

    def __init__(self, message: str, reason: str = "undecodable") -> None:
        super().__init__(message)
        self.reason = reason


class LimitExceeded(DecodeError):  # noqa: N818 - a DecodeError kind, named for what happened
    """The video is over a configured duration or frame-size limit."""


class Truncated(DecodeError):  # noqa: N818 - a DecodeError kind, named for what happened
    """No decoder could read the file, and it ends inside one of its MP4 boxes (an upload or a copy cut short):
    said instead of the last decoder's "Invalid data found when processing input"."""


# Container formats that hold still images: FFmpeg opens them as one-frame "videos", but a
# photo is not a clip, so they are refused (a real one-frame video still classifies).
_IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "gif_pipe",
                  "jpegls_pipe", "j2k_pipe", "pam_pipe", "pgm_pipe", "ppm_pipe", "psd_pipe", "svg_pipe",
                  "qoi_pipe", "dpx_pipe", "exr_pipe", "pcx_pipe", "sgi_pipe", "xpm_pipe", "jpegxl_pipe")


def why(exc: BaseException, path: Path) -> str:
    """An exception's text without the server-side path of the file (clients see this text).

    FFmpeg's error number and PyAV's closing ``: '<file>'`` go too: our message names the file first.
    """
    text = str(exc).replace(str(path), path.name)
    # Only a named folder is stripped: the parent of a bare name is "." and that of /clip.mp4 is "/",
    # and removing those would eat every dot or slash of the message.
    if path.parent.name:
        text = text.replace(str(path.parent) + os.sep, "").replace(str(path.parent), "")
    text = _ERRNO.sub("", text).replace(f": '{path.name}'", "")
    return text[:300]


def reason_only(exc: BaseException, path: Path) -> str:
    """An error's text for a report that names ``path`` itself: without the file name our messages begin with."""
    text = str(exc).removeprefix(f"{path}: ").removeprefix(f"{path.name}: ")
    return text or type(exc).__name__


def require_file(path: Path) -> None:
    """Say "not found" for a missing file, which every decoder would report as undecodable."""
    if not path.is_file():
        what = "is not a file" if path.exists() else "not found"
        raise DecodeError(f"{path.name}: {what}", "not_found")


def rate_of(pts: Sequence[int], time_base: Fraction | None, nominal: float) -> float:
    """Frames per second over the shown frames' timestamps ``pts`` (any order): a variable-rate stream, or a
    Matroska/WebM file whose nominal rate is its 1 ms timebase (what browsers' MediaRecorder writes), gets its real
    average; ``nominal`` (the stream's declared rate) where the timestamps can't tell (one frame, no timebase)."""
    if len(pts) < 2 or not time_base:
        return nominal
    span = (max(pts) - min(pts)) * time_base
    return float((len(pts) - 1) / span) if span > 0 else nominal


def declared_rate(stream: av.VideoStream) -> float:
    """The frame rate a stream's header declares (0.0 when none): what :func:`rate_of` falls back on."""
    return float(stream.average_rate or stream.guessed_rate or 0.0)


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


def read_frames_decord(path: Path, pick: IndexRule, *,
                       max_pixels: int | None = None) -> tuple[np.ndarray, VideoInfo, list[int]]:
    """Decode the frames ``pick(num_frames)`` with decord -> uint8 [T, H, W, 3] RGB; frames over ``max_pixels``
    (a stream that grows past its small header) are refused as PyAV's are."""
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
    except MemoryError:  # the worker's memory cap: decode_worker answers it and retires, not "undecodable"
        raise
    except Exception as exc:  # decord raises its own DECORDError and RuntimeError variants
        raise DecodeError(f"{path.name}: decord could not decode the video ({why(exc, path)})") from exc
    check_frame_size(path, int(frames.shape[2]), int(frames.shape[1]), None, max_pixels)
    info = VideoInfo(count, fps, int(frames.shape[2]), int(frames.shape[1]), "decord")
    return frames, info, indices


def _to_rgb(frame: object) -> np.ndarray:
    """One decoded PyAV frame -> uint8 [H, W, 3] RGB (a new array: only picked frames pay for it)."""
    return frame.to_ndarray(format="rgb24")  # type: ignore[attr-defined]


def check_frame_size(path: Path, width: int, height: int, previous: tuple[int, int] | None,
                     max_pixels: int | None) -> tuple[int, int]:
    """Refuse a decoded frame over ``max_pixels`` or of another size than the ``previous`` one; its (w, h)."""
    if max_pixels is not None and width * height > max_pixels:
        raise LimitExceeded(f"{path.name}: a frame of {width}x{height} exceeds the limit of {max_pixels} pixels",
                            "too_large")
    if previous is not None and previous != (width, height):
        raise DecodeError(f"{path.name}: the frame size changes mid-stream from {previous[0]}x{previous[1]} "
                          f"to {width}x{height}", "size_changed")
    return width, height


def read_frames_pyav(path: Path, pick: IndexRule, *,
                     max_pixels: int | None = None) -> tuple[np.ndarray, VideoInfo, list[int]]:
    """Decode sequentially with PyAV, keeping the frames at ``pick(num_frames)`` -> uint8 [T, H, W, 3] RGB.

    ``num_frames`` is first taken from the packets (read, not decoded) and one decoding pass keeps the frames picked
    by it; only where the decoder shows another number of frames than there are packets (packed B-frames, a stream
    cut mid-GOP) does a second pass pick by the real count. Memory holds only the picked frames, not the whole
    video. Every decoded frame's size is checked: a stream that grows mid-way past ``max_pixels`` (a decompression
    bomb behind a small header) or changes size is refused.
    """
    import av

    def decode(wanted: set[int]) -> tuple[list[int | None], dict[int, np.ndarray]]:
        """Every shown frame's pts, and the wanted ones (by position) as RGB."""
        shown: list[int | None] = []
        kept: dict[int, np.ndarray] = {}
        size: tuple[int, int] | None = None
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(container.streams.video[0])):
                size = check_frame_size(path, frame.width, frame.height, size, max_pixels)
                shown.append(frame.pts)
                if i in wanted:
                    kept[i] = _to_rgb(frame)
        return shown, kept

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DecodeError(f"{path.name}: the file has no video stream", "no_video_stream")
            stream = container.streams.video[0]
            time_base, nominal = stream.time_base, declared_rate(stream)
            packets = sum(1 for packet in container.demux(stream) if packet.size)
        indices = [int(i) for i in pick(packets)] if packets else []
        shown, kept = decode(set(indices))
        count = len(shown)
        if count < 1:
            raise DecodeError(f"{path.name}: the video stream has no frames", "no_frames")
        if count != packets:
            indices = [int(i) for i in pick(count)]
            if not set(indices) <= kept.keys():
                again, kept = decode(set(indices))
                if len(again) != count:
                    raise DecodeError(f"{path.name}: a second decoding showed {len(again)} frames, not {count}",
                                      "unstable")
        missing = set(indices) - kept.keys()
        if missing:
            raise DecodeError(f"{path.name}: frames {sorted(missing)[:5]} could not be decoded again", "unstable")
    except DecodeError:
        raise
    except MemoryError:  # the worker's memory cap, not a broken file (decode_worker)
        raise
    except Exception as exc:
        raise DecodeError(f"{path.name}: the video could not be decoded ({why(exc, path)})") from exc
    known = [p for p in shown if p is not None]
    rate = rate_of(known if len(known) == count else [], time_base, nominal)
    frames = np.stack([kept[i] for i in indices])
    info = VideoInfo(count, rate, int(frames.shape[2]), int(frames.shape[1]), "pyav")
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
            if container.format.name in _IMAGE_FORMATS or _a_still_gif(container):
                raise DecodeError(f"{path.name}: the file is an image ({container.format.name}), not a video",
                                  "not_a_video")
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
                rotation = quarter_turns(frame.rotation) * 90
                break
            width, height = stream.codec_context.width, stream.codec_context.height
    except DecodeError:
        raise
    except MemoryError:  # the worker's memory cap, not a broken file (decode_worker)
        raise
    except Exception as exc:
        raise DecodeError(f"{path.name}: the file is not a readable video ({why(exc, path)})") from exc
    return VideoProbe(int(width), int(height), duration, rotation)


def measured_duration_s(path: Path) -> float | None:
    """The video stream's duration from its packets' timestamps (read, not decoded), or None where they give none.

    A container's header can say anything (a 0.8 s file whose header declares 10 hours, a long one that declares a
    second): the limits go by what the stream holds."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            pts = [p.pts for p in container.demux(stream) if p.size and p.pts is not None and not p.is_discard]
            if not pts or not stream.time_base:
                return None
            rate = rate_of(pts, stream.time_base, declared_rate(stream))
    except MemoryError:
        raise
    except Exception:  # unreadable here: the decoders say why
        return None
    return len(pts) / rate if rate > 0 else None


def _a_still_gif(container: av.container.InputContainer) -> bool:
    """A GIF of one frame is a picture (an animated one is a clip, and classifies). Reads the packets: call first."""
    if container.format.name != "gif" or not container.streams.video:
        return False
    frames = sum(1 for packet in container.demux(container.streams.video[0]) if packet.size)
    container.seek(0)
    return frames <= 1


def quarter_turns(degrees: float | int | None) -> int:
    """Counter-clockwise display rotation in degrees -> quarter turns 0..3 (nearest)."""
    return round((degrees or 0) / 90) % 4


def rotate_frames(frames: np.ndarray, rotation: int) -> np.ndarray:
    """uint8 [T, H, W, 3] rotated ``rotation`` degrees counter-clockwise (a multiple of 90)."""
    turns = quarter_turns(rotation)
    if turns == 0:
        return frames
    return np.ascontiguousarray(np.rot90(frames, k=turns, axes=(1, 2)))


def read_frames(path: Path, pick: IndexRule, *,
                max_pixels: int | None = None) -> tuple[np.ndarray, VideoInfo, list[int]]:
    """Sparse PyAV decoding (MP4/MOV and Matroska/WebM, the common codecs), else decord, then full PyAV;
    :class:`DecodeError` if none can.

    Streams whose timestamps or keyframes can't be trusted (trims, cuts, open GOPs, and every stream of a container
    without per-frame timestamps: MPEG-TS/PS, AVI, ASF, FLV) go to a full PyAV decode first: decord's seeking
    returns the wrong frames of those, with a plausible answer.

    All three give the same pixels for 8-bit 4:2:0 streams (tested against each other); for 10-bit or 4:4:4
    decord's older FFmpeg converts to RGB slightly differently, and such streams take the PyAV paths. Frames come out
    upright: the container's display rotation is applied (``info.rotation``), and ``info.width``/``info.height``
    are the displayed size. ``max_pixels`` bounds every frame decoded (by PyAV as it decodes, by decord on what it
    returns).
    """
    from service.sparse_decode import SparseUnsupported, read_frames_sparse  # it builds on this module's types

    require_file(path)
    try:
        frames, info, indices = read_frames_sparse(path, pick, max_pixels=max_pixels)
        rotation = info.rotation
    except LimitExceeded:
        raise
    except (SparseUnsupported, DecodeError) as exc:
        timing = isinstance(exc, SparseUnsupported) and exc.timing
        try:
            frames, info, indices = _read_frames_full(path, pick, max_pixels, pyav_first=timing)
        except LimitExceeded:
            raise
        except DecodeError as failed:
            if (cut := mp4_cut_short(path)) is not None:  # a file cut short, where the clip needs what is missing
                raise Truncated(f"{path.name}: the file is cut short ({cut}): an upload or a copy that did not "
                                "finish?", "truncated") from failed
            raise
        rotation = probe_video(path).rotation
    if rotation and info.backend != "decord":  # decord 0.6 applies the display matrix itself
        frames = rotate_frames(frames, rotation)
    return frames, replace(info, width=int(frames.shape[2]), height=int(frames.shape[1]), rotation=rotation), indices


_FIRST_MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")  # how an MP4/MOV file begins
_MP4_BOXES = frozenset({*_FIRST_MP4_BOXES, b"moof", b"mfra", b"sidx", b"styp", b"uuid", b"meta", b"pdin", b"emsg",
                        b"prft", b"ssix"})  # the top-level boxes of MP4/MOV files


def mp4_cut_short(path: Path) -> str | None:
    """How an MP4/MOV file ends inside one of its top-level boxes (its ``mdat`` when an upload stopped early), or
    None: the file is whole, or not a box structure this can follow."""
    size = path.stat().st_size
    with path.open("rb") as f:
        offset = 0
        while offset + 8 <= size:
            f.seek(offset)
            head = f.read(16)
            length, kind = struct.unpack(">I4s", head[:8])
            if length == 1 and len(head) == 16:  # a 64-bit size follows
                length = struct.unpack(">Q", head[8:])[0]
            if length == 0:  # the box runs to the end of the file, whatever it is
                return None
            if length < 8 or kind not in _MP4_BOXES or (offset == 0 and kind not in _FIRST_MP4_BOXES):
                return None  # not an MP4/MOV box structure (any 4 bytes read as a size and a type otherwise)
            if offset + length > size:
                return f"its {kind.decode('latin-1')} box holds {length} bytes, {size - offset} are there"
            offset += length
    return None


def _read_frames_full(path: Path, pick: IndexRule, max_pixels: int | None,
                      pyav_first: bool = False) -> tuple[np.ndarray, VideoInfo, list[int]]:
    """decord, then PyAV decoding every frame if decord fails (PyAV first for streams decord numbers wrongly)."""
    readers = [partial(read_frames_decord, max_pixels=max_pixels), partial(read_frames_pyav, max_pixels=max_pixels)]
    first, second = readers[::-1] if pyav_first else readers
    try:
        return first(path, pick)
    except LimitExceeded:  # the file is over a limit, whichever decoder reads it
        raise
    except DecodeError as error:
        try:
            return second(path, pick)
        except DecodeError as again:
            raise again from error


def read_clip(path: Path, spec: Preprocessing, *,
              max_pixels: int | None = None) -> tuple[np.ndarray, VideoInfo, list[int]]:
    """The test-time clip of ``path``: uint8 [num_seg, H, W, 3] at the manifest's sampling rule."""
    return read_frames(path, lambda count: test_indices(count, spec.num_seg, spec.sampling), max_pixels=max_pixels)
