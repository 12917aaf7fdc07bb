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
    return write_video(path, frames, fps=fps, rotation=rotation)


def make_video(path: Path, num_frames: int = 24, width: int = 160, height: int = 120, seed: int = 0,
               rotation: int | None = None) -> Path:
    return write_mp4(path, pattern_frames(num_frames, width, height, seed), rotation=rotation)


def write_audio_only(path: Path) -> Path:
    """An M4A-like MP4 with one AAC audio stream and no video stream."""
    with av.open(str(path), "w", format="mp4") as container:
        _mux_silence(container, container.add_stream("aac", rate=16000), blocks=8)
    return path


def _mux_silence(container: av.container.OutputContainer, stream: av.AudioStream, blocks: int) -> None:
    """Encode ``blocks`` x 1024 samples of 16 kHz mono silence into ``stream`` and flush it."""
    samples = np.zeros((1, 1024), np.float32)
    for i in range(blocks):
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, i * 1024
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_video(path: Path, frames: np.ndarray, codec: str = "libx264", *, pix_fmt: str = "yuv420p",
                fps: int = 25, fmt: str | None = None, rotation: int | None = None,
                pts: list[int] | None = None, audio: bool = False, options: dict[str, str] | None = None,
                container_options: dict[str, str] | None = None) -> Path:
    """Encode uint8 [T, H, W, 3] RGB with any PyAV codec/container.

    ``pts`` (in 1/1000 s) makes a variable-frame-rate stream; ``audio`` adds a silent AAC track;
    ``container_options`` e.g. ``{"movflags": "faststart"}``.
    """
    rate = Fraction(fps, 1)
    with av.open(str(path), "w", format=fmt, options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        if codec in ("libx264", "libx265"):
            stream.options = {"preset": "ultrafast", **({"crf": "18"} if codec == "libx264" else {}),
                              **({"x265-params": "log-level=error"} if codec == "libx265" else {}),
                              **(options or {})}
        elif options:
            stream.options = options
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        sound = container.add_stream("aac", rate=16000) if audio else None
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if pts is not None:
                vf.pts, vf.time_base = pts[i], Fraction(1, 1000)
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            _mux_silence(container, sound, blocks=max(1, len(frames) // fps + 1) * 16)
    return path


# --- A corpus of unusual-but-valid and of bad inputs, written by the tests themselves --------------

def unusual_videos(root: Path) -> dict[str, tuple[Path, dict[str, object]]]:
    """Valid videos that must classify: name -> (file, facts the response must report)."""
    root.mkdir(parents=True, exist_ok=True)
    p = pattern_frames
    vfr_pts = [0, 40, 80, 100, 300, 310, 320, 700, 720, 1000, 1010, 1500]
    specs: dict[str, tuple[str, dict, dict[str, object]]] = {
        "one_frame.mp4": ("libx264", {"frames": p(1, 64, 48)}, {"num_frames": 1}),
        "three_frames.mp4": ("libx264", {"frames": p(3, 64, 48)}, {"num_frames": 3}),
        "tiny_16x16.mp4": ("libx264", {"frames": p(10, 16, 16)}, {"width": 16, "height": 16}),
        "odd_161x121.mp4": ("libx264", {"frames": p(10, 161, 121), "pix_fmt": "yuv444p"},
                            {"width": 161, "height": 121}),
        "uhd_3840x2160.mp4": ("libx264", {"frames": p(2, 3840, 2160)}, {"width": 3840, "height": 2160}),
        "rotated_90.mp4": ("libx264", {"frames": p(10, 64, 48), "rotation": 90},
                           {"width": 48, "height": 64, "rotation": 90}),
        "rotated_270.mp4": ("libx264", {"frames": p(10, 64, 48), "rotation": 270},
                            {"width": 48, "height": 64, "rotation": 270}),
        "rotated_180.mp4": ("libx264", {"frames": p(10, 64, 48), "rotation": 180},
                            {"width": 64, "height": 48, "rotation": 180}),
        "vfr.mp4": ("libx264", {"frames": p(12, 64, 48), "pts": vfr_pts}, {"num_frames": 12}),
        "h264_10bit.mp4": ("libx264", {"frames": p(10, 64, 48), "pix_fmt": "yuv420p10le"}, {"num_frames": 10}),
        "hevc.mp4": ("libx265", {"frames": p(10, 64, 48)}, {"num_frames": 10}),
        "hevc_10bit.mp4": ("libx265", {"frames": p(10, 64, 48), "pix_fmt": "yuv420p10le"}, {"num_frames": 10}),
        "vp9.webm": ("libvpx-vp9", {"frames": p(10, 64, 48)}, {"num_frames": 10}),
        "mpeg4.avi": ("mpeg4", {"frames": p(10, 64, 48)}, {"num_frames": 10}),
        "mjpeg.avi": ("mjpeg", {"frames": p(10, 64, 48), "pix_fmt": "yuvj420p"}, {"num_frames": 10}),
        "with_audio.mp4": ("libx264", {"frames": p(10, 64, 48), "audio": True}, {"num_frames": 10}),
        "moov_at_end.mp4": ("libx264", {"frames": p(10, 64, 48)}, {"num_frames": 10}),
        "moov_at_start.mp4": ("libx264", {"frames": p(10, 64, 48), "container_options": {"movflags": "faststart"}},
                              {"num_frames": 10}),
        "matroska.mkv": ("libx264", {"frames": p(10, 64, 48)}, {"num_frames": 10}),
        "bframes.ts": ("libx264", {"frames": p(24, 64, 48), "fmt": "mpegts",
                                   "options": {"preset": "veryfast", "bf": "3", "g": "8"}}, {"num_frames": 24}),
        "av1.mp4": ("libsvtav1", {"frames": p(10, 64, 48), "options": {"preset": "12"}}, {"num_frames": 10}),
        "animated.gif": ("gif", {"frames": p(10, 64, 48), "pix_fmt": "rgb8", "fmt": "gif"}, {"num_frames": 10}),
    }
    out = {}
    for name, (codec, kwargs, facts) in specs.items():
        kwargs = dict(kwargs)
        out[name] = (write_video(root / name, kwargs.pop("frames"), codec, **kwargs), facts)
    data = out["moov_at_end.mp4"][0].read_bytes()
    assert data.index(b"moov") > data.index(b"mdat")  # PyAV's mp4 muxer writes moov last by default
    data = out["moov_at_start.mp4"][0].read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")
    return out


def _png(frame: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, "PNG")
    return buffer.getvalue()


def bad_videos(root: Path) -> dict[str, tuple[bytes, int, str]]:
    """Bytes that must be refused: name -> (body, HTTP status, problem type). Sent as video/mp4."""
    root.mkdir(parents=True, exist_ok=True)
    import struct

    good = write_video(root / "good.mp4", pattern_frames(10, 64, 48)).read_bytes()
    mjpeg = bytearray(write_video(root / "m.avi", pattern_frames(4, 64, 48), "mjpeg", pix_fmt="yuvj420p").read_bytes())
    at = mjpeg.find(b"\xff\xc0")
    while at >= 0:  # every JPEG frame header now claims 40000 x 40000 pixels
        mjpeg[at + 5:at + 9] = struct.pack(">HH", 40000, 40000)
        at = mjpeg.find(b"\xff\xc0", at + 2)
    # Three frames whose timestamps (and so the container's duration) span 100 000 s.
    long_claim = write_video(root / "long.mp4", pattern_frames(3, 64, 48), pts=[0, 40, 100_000_000]).read_bytes()
    # A decompression bomb: a raw H.264 stream whose header (first SPS) says 16x16, then 1280x720 frames.
    bomb = (write_video(root / "s.h264", pattern_frames(2, 16, 16), fmt="h264").read_bytes()
            + write_video(root / "l.h264", pattern_frames(2, 1280, 720), fmt="h264").read_bytes())
    # The same in MPEG-TS (a packet stream: two files one after the other are one stream), which decord read whole.
    bomb_ts = (write_video(root / "s.ts", pattern_frames(2, 16, 16), fmt="mpegts").read_bytes()
               + write_video(root / "l.ts", pattern_frames(2, 1280, 720), fmt="mpegts").read_bytes())
    undecodable, limit = (422, "undecodable-video"), (422, "video-limit-exceeded")
    return {
        "text": (b"this is not a video, just some text\n" * 40, *undecodable),
        "random_bytes": (np.random.default_rng(0).bytes(20_000), *undecodable),
        "png_image": (_png(pattern_frames(1, 64, 48)[0]), *undecodable),
        "audio_only": (write_audio_only(root / "audio.mp4").read_bytes(), *undecodable),
        "truncated_head_only": (good[: len(good) // 2], *undecodable),
        "unknown_codec": (good.replace(b"avc1", b"zzzz"), *undecodable),
        "huge_dimensions_claim": (bytes(mjpeg), *undecodable),
        "huge_duration_claim": (long_claim, *limit),
        "resolution_bomb": (bomb, *limit),
        "resolution_bomb_ts": (bomb_ts, *limit),
    }


# --- Stream-copy edits that real files carry: trims (MP4 edit lists) and cuts between keyframes -------------

def remux(src: Path, dst: Path, *, drop_before_key: int = 0, shift_frames: int = 0) -> Path:
    """Copy the video packets of ``src`` into ``dst`` (container from the suffix), without re-encoding.

    ``drop_before_key=k`` drops every packet before the k-th keyframe in decode order (a cut of an open-GOP stream
    then starts with leading frames that are never shown); ``shift_frames=s`` moves every timestamp s frames earlier,
    so an MP4 gets an edit list and its first s frames are decoded but never shown.
    """
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        keys = -1
        for packet in inp.demux(stream):
            if packet.size == 0:
                continue
            keys += int(packet.is_keyframe)
            if keys < drop_before_key:
                continue
            if shift_frames:
                step = packet.duration or 1
                packet.pts, packet.dts = packet.pts - shift_frames * step, packet.dts - shift_frames * step
            packet.stream = copy
            out.mux(packet)
    return dst


def with_cover_stream(src: Path, dst: Path) -> Path:
    """``src``'s video after a one-frame MJPEG stream (like a cover image), in one Matroska file."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        cover = out.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 64, 48, "yuvj420p"
        copy = out.add_stream_from_template(inp.streams.video[0])
        for packet in cover.encode(av.VideoFrame.from_ndarray(pattern_frames(1, 64, 48)[0], format="rgb24")):
            out.mux(packet)
        for packet in cover.encode():
            out.mux(packet)
        for packet in inp.demux(inp.streams.video[0]):
            if packet.size:
                packet.stream = copy
                out.mux(packet)
    return dst
