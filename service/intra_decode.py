"""Intra-only streams (MJPEG, ProRes, DNxHD, ...) in containers that are otherwise decoded in full: only the packets a
clip keeps are decoded.

AVI, ASF, NUT and the like (every container but MP4/MOV, Matroska/WebM, MPEG-TS/PS and FLV) go to a full PyAV decode
where their timestamps can't number the frames (see :mod:`service.sparse_decode`). For an intra-only codec that is
not needed: every frame is a keyframe that decodes alone, in the order its packet is stored, so frame ``i`` is
packet ``i`` and the other packets are read, never decoded. The pixels are the full PyAV decode's (same decoder,
same conversion; tested) at the cost of the kept frames: a camera's 3-minute 480p MJPEG AVI took 6.1 s decoded in
full (0.15 s now), so ten minutes (the default duration limit) ran past the 10 s decode timeout.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from service.decode_errors import DecodeError
from service.decoding import IndexRule, VideoInfo, check_frame_size
from service.probing import declared_rate, probe_video, rate_of

# Intra-only codecs whose decoders keep nothing from one packet to the next that the packet does not say again
# (checked per packet where a format allows otherwise: MJPEG's tables, a palette). Not every codec FFmpeg calls
# intra-only qualifies: FFV1 and FFVHuff can carry context across frames.
INTRA_CODECS = frozenset({"mjpeg", "huffyuv", "rawvideo", "prores", "dnxhd", "utvideo", "magicyuv"})
# Side data that changes the decoder's state (new SPS/PPS of a restarted encoder, a palette): a packet read past
# without decoding would leave the decoder without it.
STATEFUL_SIDE_DATA = ("new_extradata", "palette", "param_change")


def has_stateful_side_data(packet: av.Packet) -> bool:
    return any(packet.has_sidedata(kind) for kind in STATEFUL_SIDE_DATA)


class IntraUnsupported(Exception):  # noqa: N818 - a signal to decode in full, not an error of the file
    """The stream does not behave as an intra-only one (a packet that is not a keyframe, one that decodes to no
    frame or to several): decode it in full."""


def is_intra_only(container: av.container.InputContainer) -> bool:
    """One video stream, of a codec whose every frame is coded alone."""
    streams = container.streams.video
    if len(streams) != 1:
        return False
    ctx = streams[0].codec_context
    return ctx.name in INTRA_CODECS and bool(ctx.codec.intra_only) and ctx.pix_fmt != "pal8"


def read_frames_intra(path: Path, container: av.container.InputContainer, pick: IndexRule, *,
                      max_pixels: int | None = None,
                      rotation: int | None = None) -> tuple[np.ndarray, VideoInfo, list[int]]:
    """The frames ``pick(num_frames)`` of ``container`` (open on ``path``, intra-only) -> (uint8 [T, H, W, 3] RGB,
    not yet rotated; info with the display rotation still to apply; indices). ``rotation``: the first frame's, where
    the caller has probed the file already (else it is probed here)."""
    stream = container.streams.video[0]
    pts: list[int | None] = []
    jpeg = stream.codec_context.name == "mjpeg"
    for packet in container.demux(stream):
        if not packet.size:  # the demuxer's end-of-stream marker
            continue
        if not packet.is_keyframe:
            raise IntraUnsupported("a packet of an intra-only stream is not a keyframe")
        if has_stateful_side_data(packet):
            raise IntraUnsupported("a packet changes the decoder's state for the packets after it")
        # The decoder keeps quantisation tables from packet to packet (a packet without them would use an earlier
        # one's); Huffman tables left out are the standard ones, as AVI's MJPEG does, the same whatever came before.
        if jpeg and not has_quantisation_tables(memoryview(packet)):
            raise IntraUnsupported(f"MJPEG packet {len(pts)} leaves out its quantisation tables")
        pts.append(packet.pts)
    if not pts:
        raise IntraUnsupported("no frames in the packet index")
    indices = [int(i) for i in pick(len(pts))]
    if not indices or min(indices) < 0 or max(indices) >= len(pts):
        raise DecodeError(f"{path.name}: frames {indices[:8]} are not all in 0..{len(pts) - 1}", "unstable")
    kept = _decode_packets(path, set(indices), max_pixels)
    if rotation is None:  # the first frame's, as the full decode applies to every frame
        rotation = probe_video(path).rotation
    known = [p for p in pts if p is not None]
    rate = rate_of(known if len(known) == len(pts) else [], stream.time_base, declared_rate(stream))
    frames = np.stack([kept[i] for i in indices])
    return frames, VideoInfo(len(pts), rate, int(frames.shape[2]), int(frames.shape[1]), "pyav-intra",
                             rotation), indices


def has_quantisation_tables(data: bytes | memoryview) -> bool:
    """Whether one JPEG's marker segments before its first scan define quantisation tables (DQT)."""
    at = 2 if data[:2] == b"\xff\xd8" else 0  # after SOI
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker == 0xDB:
            return True
        if marker == 0xDA:  # start of scan: tables come before it
            return False
        at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
    return False


def _decode_packets(path: Path, wanted: set[int], max_pixels: int | None) -> dict[int, np.ndarray]:
    """Decode the packets at the positions ``wanted`` (a second pass, from the start) -> their RGB frames."""
    kept: dict[int, np.ndarray] = {}
    size: tuple[int, int] | None = None
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1  # frame threads would hold a frame back; the pool provides the parallelism
        position = -1
        for packet in container.demux(stream):
            if not packet.size:
                continue
            position += 1
            if position not in wanted:
                continue
            if stream.codec_context.name == "mjpeg" and not bytes(memoryview(packet)[-64:]).rstrip(b"\0") \
                    .endswith(b"\xff\xd9"):  # no end-of-image marker: a cut JPEG, which a full decode conceals
                raise IntraUnsupported(f"MJPEG packet {position} is cut short")
            frames = stream.codec_context.decode(packet)
            if len(frames) != 1:
                raise IntraUnsupported(f"packet {position} decoded to {len(frames)} frames")
            if frames[0].is_corrupt:  # a cut or damaged packet: a full decode conceals it from the frame before
                raise IntraUnsupported(f"packet {position} decoded to a frame flagged corrupt")
            size = check_frame_size(path, frames[0].width, frames[0].height, size, max_pixels)
            kept[position] = frames[0].to_ndarray(format="rgb24")
            if len(kept) == len(wanted):
                break
    if len(kept) != len(wanted):
        raise IntraUnsupported(f"the second pass found {position + 1} packets")
    return kept
