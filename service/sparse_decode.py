"""Sparse decoding: only the frames a clip needs and the frames they depend on, with the pixels of a full decode.

A clip keeps 8 of a few hundred frames. Two facts of the codec let most of the rest go undecoded without changing a
single output pixel: a frame that no other frame references (a non-reference B-frame) can be dropped unless it is one
we keep, and decoding can restart at any keyframe, so frames between two kept ones are skipped whenever a keyframe
lies between them. On a 10 s 720p H.264 clip this decodes about half the frames decord decodes.

Frames are numbered in presentation order from the container's packet index, as decord numbers them, and matched by
timestamp. That needs timestamps a container stores per frame and keyframes that are clean restart points, so only
video from the codecs and containers below takes this path (for 8-bit 4:2:0 the RGB pixels equal decord's exactly,
tested; 10-bit and 4:4:4 are PyAV's own conversion, which decord's older FFmpeg does slightly differently); anything
else, and any restart that doesn't land on the keyframe it asked for, raises :class:`SparseUnsupported` so the caller
decodes the whole stream instead (an intra-only stream in another container goes to :mod:`service.intra_decode`,
whose packets number its frames). Frames that are never decoded are never
checked: a stream whose frame size changes only inside a skipped stretch is accepted, and those frames never reach
memory.
"""

from __future__ import annotations

import bisect
import collections
import itertools
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from service.decode_errors import DecodeError, LimitExceeded, why
from service.decoding import IndexRule, VideoInfo, check_frame_size
from service.intra_decode import IntraUnsupported, has_stateful_side_data, is_intra_only, read_frames_intra
from service.probing import declared_rate, quarter_turns, rate_of

# Containers that store a timestamp per frame and seek by index (AVI's timestamps are decode order, MPEG-PS/TS
# timestamps move after a seek: decord's seeking numbers their frames wrongly too, so those are read forward or
# decoded in full, below), and
# codecs whose decoders honour skip_frame and restart cleanly at keyframes (each restart is checked all the same).
SPARSE_CONTAINERS = ("mp4", "matroska")
# MPEG-TS/PS and FLV store real presentation timestamps, but they move after a seek (FLV's seeking rests on an
# optional index): these are read on to each keyframe instead (the skipped packets are only read, not decoded), so
# a camcorder's or OBS's long .ts, or an RTMP recording, costs what its wanted stretches cost.
FORWARD_CONTAINERS = ("mpegts", "mpeg", "flv")
# AVI and ASF number frames in decode order, which is presentation order only where the codec's profile has no
# B-frames (a camera's Baseline H.264): those are read forward too, each frame checked to
# come out of its own packet; every other inter-coded stream of these containers is decoded in full.
PACKET_ORDER_CONTAINERS = ("avi", "asf")
# Not MPEG-4 Simple Profile: DivX/Xvid mark a dropped frame with a not-coded VOP, a packet that shows no frame, so
# the packets don't count the frames a full decode shows (the review of 2026-12-07 found 30 packets for 27 frames).
NO_REORDER_PROFILES = frozenset({("h264", "Baseline"), ("h264", "Constrained Baseline")})
SPARSE_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "libdav1d", "mpeg4", "mpeg2video"})  # libdav1d: AV1
# Decoders that lose shown frames when told to skip non-reference ones (libdav1d: AV1's hidden and shown frames):
# they still seek from keyframe to keyframe, but decode every frame in between.
NO_SKIPPING = frozenset({"av1", "libdav1d"})


class SparseUnsupported(Exception):  # noqa: N818 - a signal to use another decoder, not an error of the file
    """This stream can't be decoded sparsely with exact pixels; decode it another way.

    ``timing`` marks a stream whose timestamps or keyframes can't be trusted (a trimmed or cut stream, a recovery
    point flagged as a keyframe): decord's seeking numbers those frames wrongly too, so decode them in full.
    """

    def __init__(self, message: str, *, timing: bool = False) -> None:
        super().__init__(message)
        self.timing = timing


def _index(container: av.container.InputContainer, stream: av.VideoStream) -> tuple[list[int], list[int], bool]:
    """(every frame's pts in presentation order, keyframe pts in order, whether any packet's pts differs from its
    dts), read from packets without decoding."""
    pts: list[int] = []
    keys: list[int] = []
    latest: int | None = None  # the highest pts so far, in decode order
    offsets = backwards = False
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream marker
            continue
        if packet.pts is None:
            raise SparseUnsupported("a packet has no presentation timestamp", timing=True)  # a stream-copy cut
        if has_stateful_side_data(packet):
            raise SparseUnsupported("a packet changes the decoder's parameters mid-stream", timing=True)
        offsets = offsets or (packet.dts is not None and packet.dts != packet.pts)
        backwards = backwards or (latest is not None and packet.pts <= latest)
        if packet.is_keyframe:
            # Every frame before a keyframe in decode order is shown before it; a keyframe that isn't ahead of them
            # all means the timestamps jump back (two recordings joined, a wrap): sorted pts would number the frames
            # otherwise than the decoder shows them.
            if latest is not None and packet.pts <= latest:
                raise SparseUnsupported("the timestamps jump back at a keyframe", timing=True)
            keys.append(packet.pts)
        latest = packet.pts if latest is None else max(latest, packet.pts)
        if not packet.is_discard:  # e.g. before an MP4 edit list's start: decoded, never shown
            pts.append(packet.pts)
    if backwards and not stream.codec_context.has_b_frames:
        # A decoder that does not reorder shows frames in decode order, whatever their timestamps say (two frames'
        # timestamps swapped by a muxer): sorted timestamps would name other frames.
        raise SparseUnsupported("timestamps go back in a stream that does not reorder its frames", timing=True)
    pts.sort()
    keys.sort()
    if len(set(pts)) != len(pts):
        raise SparseUnsupported("two packets share a presentation timestamp")
    if pts and (not keys or pts[0] < keys[0]):  # open-GOP leading frames of a cut stream are never output
        raise SparseUnsupported("frames are shown before the first keyframe", timing=True)
    return pts, keys, offsets


class _Decoder:
    """Decodes forward from a keyframe, dropping unkept non-reference frames, and keeps the wanted ones as RGB."""

    def __init__(self, path: Path, container: av.container.InputContainer, wanted: set[int],
                 max_pixels: int | None, seekable: bool = True, in_order: bool = False) -> None:
        self.path, self.container, self.wanted, self.max_pixels = path, container, wanted, max_pixels
        self.seekable, self.in_order = seekable, in_order
        self._forward: Iterator[av.Packet] | None = None  # without seeks: one pass over the packets
        self.stream = container.streams.video[0]
        # One thread: the pool provides the parallelism. FFmpeg's slice threads cut a lone 720p clip's decode from
        # 470 to 260 ms but, under load beside inference, lowered throughput (e2e bench, 2026-12-07: 1.44-1.49x
        # the baseline against 1.54-1.65x with one thread).
        self.stream.thread_count = 1
        self.kept: dict[int, np.ndarray] = {}
        self.size: tuple[int, int] | None = None
        self.rotation = 0
        self.restart: int | None = None  # pts of the keyframe decoding restarted at, until it is seen
        self.shown: int | None = None  # pts of the last frame out of the decoder since the restart
        # In order: every packet is decoded (a dropped B-frame would hide that the stream reorders) and the frames
        # must come out in the order their packets went in, a decoder's delay allowed.
        self.skipping = self.stream.codec_context.name not in NO_SKIPPING and not in_order
        self.fed: collections.deque[int] = collections.deque()  # in order: packets in, their frames not yet out

    def restart_at(self, keyframe_pts: int) -> Iterator[av.Packet]:
        """Go to the keyframe at ``keyframe_pts`` (a seek, or reading on to it) and return the packets from there."""
        if self.seekable:
            self.container.seek(keyframe_pts, stream=self.stream, backward=True, any_frame=False)
            packets: Iterator[av.Packet] = self.container.demux(self.stream)
        else:
            if self._forward is None:
                self._forward = self.container.demux(self.stream)
            for packet in self._forward:
                if packet.size and packet.is_keyframe and packet.pts == keyframe_pts:
                    break
            else:
                raise SparseUnsupported("reading on did not reach a keyframe of the index", timing=True)
            packets = itertools.chain([packet], self._forward)
        self.stream.codec_context.flush_buffers()
        self.restart, self.shown = keyframe_pts, None
        self.fed.clear()
        return packets

    def feed(self, packet: av.Packet | None) -> None:
        """Decode one packet (``None`` drains the decoder at the end of the stream)."""
        ctx = self.stream.codec_context
        skip = self.skipping and packet is not None and packet.pts not in self.wanted
        ctx.skip_frame = "NONREF" if skip else "DEFAULT"
        if self.in_order and packet is not None:
            self.fed.append(packet.pts)
        for frame in ctx.decode(packet):
            self._check(frame)
            if frame.pts is None:
                raise SparseUnsupported("a decoded frame has no presentation timestamp")
            if self.in_order and (not self.fed or self.fed.popleft() != frame.pts):
                # Out of another packet than the next one in: the stream reorders (or a packet showed no frame),
                # so the packets don't number the frames a full decode shows.
                raise SparseUnsupported("the frames did not come out in the order of their packets", timing=True)
            if self.shown is not None and frame.pts <= self.shown:  # timestamps out of display order
                raise SparseUnsupported("the decoder showed frames in another order than their timestamps",
                                        timing=True)
            self.shown = frame.pts
            if frame.is_corrupt:  # a cut or damaged packet: a full decode conceals it from earlier frames
                raise SparseUnsupported("a decoded frame is flagged corrupt", timing=True)
            if self.restart is not None and frame.pts >= self.restart:
                # The first frame at or after the restart point must be that keyframe, whole: otherwise the
                # container's timestamps moved with the seek, or its "keyframe" was only a recovery point.
                if frame.pts != self.restart or not frame.key_frame:
                    raise SparseUnsupported("a seek did not restart decoding at its keyframe", timing=True)
                self.restart = None
            if frame.pts in self.wanted and frame.pts not in self.kept:
                self.kept[frame.pts] = frame.to_ndarray(format="rgb24")
                self.rotation = quarter_turns(frame.rotation) * 90

    def _check(self, frame: av.VideoFrame) -> None:
        self.size = check_frame_size(self.path, frame.width, frame.height, self.size, self.max_pixels)


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
                current_key = packet.pts if current_key is None else max(current_key, packet.pts)
            dec.feed(packet)
        if target not in dec.kept:
            raise DecodeError(f"{dec.path.name}: frame at pts {target} could not be decoded", "unstable")


def read_frames_sparse(path: Path, pick: IndexRule, *, max_pixels: int | None = None,
                       rotation: int | None = None) -> tuple[np.ndarray, VideoInfo, list[int]]:
    """The frames ``pick(num_frames)`` -> (uint8 [T, H, W, 3] RGB, not yet rotated; info; indices).

    ``info.rotation`` is the display rotation the caller still has to apply (``rotation``, where the caller has
    probed it, serves the intra-only path, which would otherwise open the file once more to read it). Raises
    :class:`SparseUnsupported` where this path can't promise decord's pixels, :class:`DecodeError` where the file is
    broken. Outside MP4 and Matroska every refusal is a timing one: decord's seeking numbers the frames of those
    containers wrongly too.
    """
    seekable: bool | None = None  # not known until the file opens
    try:
        with av.open(str(path)) as container:
            names = container.format.name.split(",")
            seekable = any(name in names for name in SPARSE_CONTAINERS)
            if seekable or any(name in names for name in FORWARD_CONTAINERS):
                frames, info, indices = _read_sparse(path, container, pick, max_pixels, seekable)
            elif is_intra_only(container):  # e.g. a camera's MJPEG AVI: its packets number its frames
                frames, info, indices = read_frames_intra(path, container, pick, max_pixels=max_pixels,
                                                          rotation=rotation)
            elif any(name in names for name in PACKET_ORDER_CONTAINERS) and _never_reorders(container):
                frames, info, indices = _read_sparse(path, container, pick, max_pixels, False, in_order=True)
            else:
                raise SparseUnsupported(f"container {container.format.name}", timing=True)
    except IntraUnsupported as exc:
        raise SparseUnsupported(str(exc), timing=True) from exc
    except SparseUnsupported as exc:
        if seekable or exc.timing:
            raise
        raise SparseUnsupported(str(exc), timing=True) from exc
    except DecodeError as exc:
        if seekable or isinstance(exc, LimitExceeded):
            raise
        raise SparseUnsupported(str(exc), timing=True) from exc  # the full decode says what is wrong, if anything
    except MemoryError:  # the worker's memory cap, not a broken file (decode_worker)
        raise
    except Exception as exc:
        if seekable is False:  # as every refusal outside MP4 and Matroska: PyAV's full decode first, not decord's
            raise SparseUnsupported(f"the video could not be decoded ({why(exc, path)})", timing=True) from exc
        raise DecodeError(f"{path.name}: the video could not be decoded ({why(exc, path)})") from exc
    return frames, info, indices


def _read_sparse(path: Path, container: av.container.InputContainer, pick: IndexRule, max_pixels: int | None,
                 seekable: bool, in_order: bool = False) -> tuple[np.ndarray, VideoInfo, list[int]]:
    if len(container.streams.video) != 1:  # decord picks its own among several (a cover image, ...)
        raise SparseUnsupported("not exactly one video stream")
    stream = container.streams.video[0]
    if stream.codec_context.name not in SPARSE_CODECS:
        raise SparseUnsupported(f"codec {stream.codec_context.name}")
    pts, keys, offsets = _index(container, stream)
    # Timestamps without composition offsets claim decode order is display order: hold the decoder to it (a
    # B-frame stream whose muxer wrote pts = dts, as some RTMP pushers do, would be numbered in decode order).
    in_order = in_order or not offsets
    if not pts:
        raise SparseUnsupported("no frames in the packet index")
    rate = rate_of(pts, stream.time_base, declared_rate(stream))
    indices = [int(i) for i in pick(len(pts))]
    if not indices or min(indices) < 0 or max(indices) >= len(pts):
        raise DecodeError(f"{path.name}: frames {indices[:8]} are not all in 0..{len(pts) - 1}", "unstable")
    wanted = {pts[i] for i in indices}
    if seekable:
        dec = _Decoder(path, container, wanted, max_pixels)
        _decode(dec, sorted(dec.wanted), keys)
    else:
        with av.open(str(path)) as again:  # from the start, never seeking
            dec = _Decoder(path, again, wanted, max_pixels, seekable=False, in_order=in_order)
            _decode(dec, sorted(dec.wanted), keys)
    frames = np.stack([dec.kept[pts[i]] for i in indices])
    return frames, VideoInfo(len(pts), rate, int(frames.shape[2]), int(frames.shape[1]), "pyav-sparse",
                             dec.rotation), indices


def _never_reorders(container: av.container.InputContainer) -> bool:
    """One video stream, of a codec profile without B-frames (its header says so; decoding checks it again)."""
    streams = container.streams.video
    return len(streams) == 1 and (streams[0].codec_context.name, streams[0].codec_context.profile) in \
        NO_REORDER_PROFILES
