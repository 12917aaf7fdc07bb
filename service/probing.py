"""What a video file declares and holds, read from its container without decoding the clip: size, duration,
display rotation, frame rate from the timestamps, an image posing as a video, an MP4 cut short."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from service.decode_errors import DecodeError, failures_as

if TYPE_CHECKING:
    import av


# Container formats that hold still images: FFmpeg opens them as one-frame "videos", but a
# photo is not a clip, so they are refused (a real one-frame video still classifies).
_IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "gif_pipe",
                  "jpegls_pipe", "j2k_pipe", "pam_pipe", "pgm_pipe", "ppm_pipe", "psd_pipe", "svg_pipe",
                  "qoi_pipe", "dpx_pipe", "exr_pipe", "pcx_pipe", "sgi_pipe", "xpm_pipe", "jpegxl_pipe")


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

    with failures_as(path, "the file is not a readable video"), av.open(str(path)) as container:
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


_FIRST_MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")  # how an MP4/MOV file begins
_MP4_BOXES = frozenset({*_FIRST_MP4_BOXES, b"moof", b"mfra", b"sidx", b"styp", b"uuid", b"meta", b"pdin", b"emsg",
                        b"prft", b"ssix"})  # the top-level boxes of MP4/MOV files


def mp4_cut_short(path: Path) -> str | None:
    """How an MP4/MOV file ends inside one of its top-level boxes (its ``mdat`` when an upload stopped early), or
    None: the file is whole, not a box structure this can follow, or unreadable (an upload whose request was
    cancelled is removed while its decode may still start: the decoders' own error says so)."""
    try:
        return _box_cut_short(path)
    except OSError:
        return None


def _box_cut_short(path: Path) -> str | None:
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
