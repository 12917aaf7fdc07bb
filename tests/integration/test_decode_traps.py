"""Files built to trap the packet-numbered and forward decode paths (found by a review, 2026-12-07): each returned
other frames under the right indices before; now each is declined to the full decode, and equals it."""

from __future__ import annotations

import struct
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from service.decoding import read_frames, read_frames_pyav
from tests.videos import pattern_frames, write_video


def _rewrite(src: Path, dst: Path, fmt: str, edit: Callable[[int, av.Packet], tuple[bytes, int, int]]) -> Path:
    """Remux ``src``'s video packets into ``dst``, each replaced by ``edit(i, packet)`` = (bytes, pts, dts)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format=fmt) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for i, packet in enumerate(p for p in inp.demux(inp.streams.video[0]) if p.size):
            data, pts, dts = edit(i, packet)
            copy = av.Packet(data)
            copy.pts, copy.dts, copy.is_keyframe, copy.time_base = pts, dts, packet.is_keyframe, packet.time_base
            copy.stream = stream
            out.mux(copy)
    return dst


def _without_quantisation(data: bytes) -> bytes:
    """A JPEG with its quantisation tables (DQT segments) left out."""
    out, at = bytearray(data[:2]), 2
    while at < len(data) and data[at + 1] != 0xDA:
        length = int.from_bytes(data[at + 2:at + 4], "big")
        if data[at + 1] != 0xDB:
            out += data[at:at + 2 + length]
        at += 2 + length
    return bytes(out + data[at:])


def _flv_tags(data: bytes) -> tuple[bytes, list[tuple[int, int, bytes]]]:
    """An FLV file's header and its tags as (type, timestamp ms, body)."""
    at, tags = struct.unpack(">I", data[5:9])[0] + 4, []
    while at + 11 <= len(data):
        size = int.from_bytes(data[at + 1:at + 4], "big")
        stamp = int.from_bytes(data[at + 4:at + 7], "big") | data[at + 7] << 24
        tags.append((data[at], stamp, data[at + 11:at + 11 + size]))
        at += 15 + size
    return data[:struct.unpack(">I", data[5:9])[0]], tags


def _flv(header: bytes, tags: list[tuple[int, int, bytes]]) -> bytes:
    out = bytearray(header) + bytes(4)
    for kind, stamp, body in tags:
        out += bytes([kind]) + len(body).to_bytes(3, "big") + (stamp & 0xFFFFFF).to_bytes(3, "big")
        out += bytes([stamp >> 24 & 0xFF]) + bytes(3) + body + (11 + len(body)).to_bytes(4, "big")
    return bytes(out)


def _b_frames_with_pts_equal_to_dts(root: Path) -> Path:
    """Some RTMP pushers write no composition offsets: decode order timestamps on a B-frame stream."""
    src = write_video(root / "b.flv", pattern_frames(60, 96, 64), fmt="flv",
                      options={"preset": "veryfast", "bf": "3", "g": "30"})
    return _rewrite(src, root / "cts0.flv", "flv", lambda i, p: (bytes(p), p.dts, p.dts))


def _two_timestamps_swapped(root: Path) -> Path:
    src = write_video(root / "base.flv", pattern_frames(40, 96, 64), fmt="flv",
                      options={"profile": "baseline", "g": "30"})
    step = 40  # ms at 25 fps

    def swap(i: int, p: av.Packet) -> tuple[bytes, int, int]:
        return bytes(p), p.pts + {10: step, 11: -step}.get(i, 0), p.dts - 2 * step
    return _rewrite(src, root / "swapped.flv", "flv", swap)


def _encoder_restarted(root: Path) -> Path:
    """A second AVC sequence header mid-stream (OBS reconnecting with other settings): new SPS/PPS as side data."""
    first = write_video(root / "s1.flv", pattern_frames(30, 96, 64, seed=1), fmt="flv",
                        options={"profile": "baseline", "g": "10"})
    second = write_video(root / "s2.flv", pattern_frames(30, 96, 64, seed=2)[:, :, ::-1].copy(), fmt="flv",
                         options={"profile": "main", "g": "10", "bf": "0", "x264-params": "cabac=1"})
    header, tags = _flv_tags(first.read_bytes())
    last = max(stamp for kind, stamp, _ in tags if kind == 9)
    joined = [t for t in tags if t[0] != 9 or t[2][1] != 2]  # without the end-of-sequence tag
    joined += [(9, stamp + last + 40, body) for kind, stamp, body in _flv_tags(second.read_bytes())[1]
               if kind == 9 and body[1] != 2]
    (root / "restarted.flv").write_bytes(_flv(header, joined))
    return root / "restarted.flv"


def _paletted(root: Path) -> Path:
    """Old Windows DIB video: the palette rides on the first packet only."""
    path, palette = root / "pal8.avi", np.zeros((256, 4), np.uint8)
    palette[:, 0], palette[:, 1], palette[:, 3] = np.arange(256), 255 - np.arange(256), 255
    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("rawvideo", rate=Fraction(10, 1))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "pal8"
        for t in range(30):
            frame = av.VideoFrame(64, 48, "pal8")
            frame.planes[0].update(((np.arange(64)[None] + np.arange(48)[:, None] + 5 * t) % 256).astype(np.uint8))
            frame.planes[1].update(palette.tobytes())
            frame.pts = t
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _mjpeg_quantisation_once(root: Path) -> Path:
    """MJPEG whose packets after the first leave out their quantisation tables, relying on the decoder keeping
    packet 0's."""
    src = write_video(root / "mj.avi", pattern_frames(30, 96, 64), "mjpeg", pix_fmt="yuvj420p", fmt="avi",
                      options={"qscale": "3"})
    return _rewrite(src, root / "mj_once.avi", "avi",
                    lambda i, p: (bytes(p) if i == 0 else _without_quantisation(bytes(p)), p.pts, p.dts))


def _mjpeg_cut_short(root: Path) -> Path:
    """A recording cut mid-frame: a full decode conceals the last JPEG's missing rows from the frame before."""
    src = write_video(root / "mj.nut", pattern_frames(40, 96, 64), "mjpeg", pix_fmt="yuvj420p", fmt="nut")
    data = src.read_bytes()
    (root / "cut.nut").write_bytes(data[:int(len(data) * 0.97)])
    return root / "cut.nut"


TRAPS: dict[str, Callable[[Path], Path]] = {
    "flv_b_frames_pts_equal_dts": _b_frames_with_pts_equal_to_dts,
    "flv_two_timestamps_swapped": _two_timestamps_swapped,
    "flv_encoder_restarted": _encoder_restarted,
    "avi_paletted": _paletted,
    "mjpeg_quantisation_once": _mjpeg_quantisation_once,
    "mjpeg_cut_short": _mjpeg_cut_short,
}


@pytest.mark.parametrize("trap", TRAPS)
def test_every_frame_equals_a_full_decode(tmp_path: Path, trap: str) -> None:
    path = TRAPS[trap](tmp_path)
    count = read_frames_pyav(path, lambda n: [0])[1].num_frames
    for pick in [lambda n: list(np.linspace(0, n - 1, 8).round().astype(int)),
                 *[(lambda n, i=i: [i]) for i in range(count)]]:
        frames, info, idx = read_frames(path, pick)
        want, want_info, want_idx = read_frames_pyav(path, pick)
        assert (info.num_frames, idx) == (want_info.num_frames, want_idx), trap
        assert np.array_equal(frames, want), f"{trap}: frames {idx} ({info.backend})"


def test_a_decoder_that_holds_frames_back_without_reordering_stays_on_the_forward_path(tmp_path: Path) -> None:
    """No B-frames, but an SPS that declares a reorder depth (some cameras' encoders): the decoder shows each frame a
    packet late, in order. Checking the order, not the timing, keeps such a stream sparse (the review's repro)."""
    src = tmp_path / "p.ts"
    with av.open(str(src), "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=Fraction(25, 1))
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.options = {"preset": "veryfast", "bf": "2", "g": "30", "x264-params": "b-adapt=0:scenecut=0"}
        for i, image in enumerate(pattern_frames(90, 160, 120)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            frame.pict_type = av.video.frame.PictureType.I if i % 30 == 0 else av.video.frame.PictureType.P
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    path = _rewrite(src, tmp_path / "pts_eq_dts.ts", "mpegts", lambda i, p: (bytes(p), p.pts, p.pts))
    pick = lambda n: list(np.linspace(0, n - 1, 8).round().astype(int))  # noqa: E731
    frames, info, _ = read_frames(path, pick)
    assert info.backend == "pyav-sparse"
    assert np.array_equal(frames, read_frames_pyav(path, pick)[0])


def _cut_to_a_quarter(which: Callable[[int], bool]) -> Callable[[int, av.Packet], tuple[bytes, int, int]]:
    def edit(i: int, packet: av.Packet) -> tuple[bytes, int, int]:
        data = bytes(packet)
        return (data[:len(data) // 4] if which(i) else data), packet.pts, packet.dts
    return edit


def test_a_damaged_packet_is_skipped_as_a_player_skips_it(tmp_path: Path) -> None:
    """Every decoder refused a whole video for one damaged packet (FFmpeg's 'Invalid data found'); most of them
    damaged, it is still refused, saying so."""
    from service.decode_errors import DecodeError

    src = write_video(tmp_path / "src.mkv", pattern_frames(60, 96, 64), fmt="matroska")
    original, _, _ = read_frames_pyav(src, lambda count: range(count))
    cut = _rewrite(src, tmp_path / "cut.mkv", "matroska", _cut_to_a_quarter(lambda i: i == 20))
    frames, info, _ = read_frames(cut, lambda count: range(count))
    assert (info.num_frames, info.backend) == (59, "pyav")
    np.testing.assert_array_equal(frames[:15], original[:15])
    broken = _rewrite(src, tmp_path / "broken.mkv", "matroska", _cut_to_a_quarter(lambda i: i % 30 != 0))
    with pytest.raises(DecodeError, match=r"broken\.mkv: \d+ of its 60 video packets could not be decoded"):
        read_frames(broken, lambda count: range(count))


def test_a_frame_the_decoder_flags_corrupt_is_left_to_the_full_decode(tmp_path: Path) -> None:
    """A packet whose payload is zeroed decodes, concealed from earlier frames, flagged corrupt: the sparse path,
    which seeks past those earlier frames, declines it."""
    import service.sparse_decode as sparse

    src = write_video(tmp_path / "src.mkv", pattern_frames(60, 96, 64), fmt="matroska")

    def zeroed(i: int, packet: av.Packet) -> tuple[bytes, int, int]:
        data = bytes(packet)
        return (data[:len(data) // 3] + bytes(len(data) - len(data) // 3) if i == 40 else data), packet.pts, packet.dts

    damaged = _rewrite(src, tmp_path / "zeroed.mkv", "matroska", zeroed)
    with pytest.raises(sparse.SparseUnsupported, match="flagged corrupt"):
        sparse.read_frames_sparse(damaged, lambda count: range(0, count, 3))
    frames = read_frames(damaged, lambda count: range(0, count, 3))[0]
    np.testing.assert_array_equal(frames, read_frames_pyav(damaged, lambda count: range(0, count, 3))[0])
