"""Video decoding behind one interface: sparse PyAV where pixels are exact, decord, PyAV for files decord can't read.

Both training's evaluation and the service read clips through :func:`read_clip`, so the
pixels fed to the network are the same on both paths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

from service.contract.manifest import Preprocessing
from service.contract.sampling import test_indices
from service.decode_errors import DecodeError, LimitExceeded, Truncated, failures_as, require_file
from service.probing import declared_rate, mp4_cut_short, probe_video, quarter_turns, rate_of


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

    with failures_as(path, "decord could not decode the video"):  # its own DECORDError and RuntimeError variants
        reader = decord.VideoReader(str(path), num_threads=1)
        count = len(reader)
        if count < 1:
            raise DecodeError(f"{path.name}: the video stream has no frames", "no_frames")
        indices = [int(i) for i in pick(count)]
        frames = reader.get_batch(indices).asnumpy()
        fps = float(reader.get_avg_fps() or 0.0)
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


def _shown_frames(path: Path, wanted: set[int],
                  max_pixels: int | None) -> tuple[list[int | None], dict[int, np.ndarray], int]:
    """One sequential PyAV decode: every shown frame's pts, the ``wanted`` ones (by position) as RGB, and how many
    packets could not be decoded."""
    import av

    shown: list[int | None] = []
    kept: dict[int, np.ndarray] = {}
    size: tuple[int, int] | None = None
    damaged = 0
    with av.open(str(path)) as container:
        for packet in container.demux(container.streams.video[0]):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:  # a damaged packet: skipped, as players and ffmpeg do
                damaged += 1
                continue
            for frame in frames:
                size = check_frame_size(path, frame.width, frame.height, size, max_pixels)
                if len(shown) in wanted:
                    kept[len(shown)] = _to_rgb(frame)
                shown.append(frame.pts)
    return shown, kept, damaged


def read_frames_pyav(path: Path, pick: IndexRule, *,
                     max_pixels: int | None = None) -> tuple[np.ndarray, VideoInfo, list[int]]:
    """Decode sequentially with PyAV, keeping the frames at ``pick(num_frames)`` -> uint8 [T, H, W, 3] RGB.

    ``num_frames`` is first taken from the packets (read, not decoded) and one decoding pass keeps the frames picked
    by it; only where the decoder shows another number of frames than there are packets (packed B-frames, a stream
    cut mid-GOP, a damaged packet, which is skipped as a player skips it) does a second pass pick by the real
    count. A stream of which most packets fail to decode is refused. Memory holds only the picked frames, not the
    whole video. Every decoded frame's size is checked: a stream that grows mid-way past ``max_pixels`` (a
    decompression bomb behind a small header) or changes size is refused.
    """
    import av

    with failures_as(path, "the video could not be decoded"):
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DecodeError(f"{path.name}: the file has no video stream", "no_video_stream")
            stream = container.streams.video[0]
            time_base, nominal = stream.time_base, declared_rate(stream)
            packets = sum(1 for packet in container.demux(stream) if packet.size)
        indices = [int(i) for i in pick(packets)] if packets else []
        shown, kept, damaged = _shown_frames(path, set(indices), max_pixels)
        if damaged * 2 > packets:  # not a damaged packet or two: a broken stream
            raise DecodeError(f"{path.name}: {damaged} of its {packets} video packets could not be decoded",
                              "damaged")
        count = len(shown)
        if count < 1:
            raise DecodeError(f"{path.name}: the video stream has no frames", "no_frames")
        if count != packets:
            indices = [int(i) for i in pick(count)]
            if not set(indices) <= kept.keys():
                again, kept, _ = _shown_frames(path, set(indices), max_pixels)
                if len(again) != count:
                    raise DecodeError(f"{path.name}: a second decoding showed {len(again)} frames, not {count}",
                                      "unstable")
        missing = set(indices) - kept.keys()
        if missing:
            raise DecodeError(f"{path.name}: frames {sorted(missing)[:5]} could not be decoded again", "unstable")
    known = [p for p in shown if p is not None]
    rate = rate_of(known if len(known) == count else [], time_base, nominal)
    frames = np.stack([kept[i] for i in indices])
    info = VideoInfo(count, rate, int(frames.shape[2]), int(frames.shape[1]), "pyav")
    return frames, info, indices


def rotate_frames(frames: np.ndarray, rotation: int) -> np.ndarray:
    """uint8 [T, H, W, 3] rotated ``rotation`` degrees counter-clockwise (a multiple of 90)."""
    turns = quarter_turns(rotation)
    if turns == 0:
        return frames
    return np.ascontiguousarray(np.rot90(frames, k=turns, axes=(1, 2)))


def read_frames(path: Path, pick: IndexRule, *, max_pixels: int | None = None,
                rotation: int | None = None) -> tuple[np.ndarray, VideoInfo, list[int]]:
    """Sparse PyAV decoding (MP4/MOV and Matroska/WebM, the common codecs; MPEG-TS/PS, FLV and B-frame-free
    AVI/ASF read forward; intra-only codecs in other containers packet by packet), else decord, then full PyAV;
    :class:`DecodeError` if none can.

    Streams whose timestamps or keyframes can't be trusted (trims, cuts, open GOPs, and every B-frame stream of a
    container without per-frame timestamps: AVI, ASF) go to a full PyAV decode first: decord's seeking returns the
    wrong frames of those, with a plausible answer.

    All three give the same pixels for 8-bit 4:2:0 streams (tested against each other); for 10-bit or 4:4:4
    decord's older FFmpeg converts to RGB slightly differently, and such streams take the PyAV paths. Frames come out
    upright: the container's display rotation is applied (``info.rotation``), and ``info.width``/``info.height``
    are the displayed size. ``max_pixels`` bounds every frame decoded (by PyAV as it decodes, by decord on what it
    returns). ``rotation``: the display rotation where the caller has probed the file already (a full decode or the
    intra-only path would open it once more to read it).
    """
    from service.sparse_decode import SparseUnsupported, read_frames_sparse  # it builds on this module's types

    require_file(path)
    try:
        frames, info, indices = read_frames_sparse(path, pick, max_pixels=max_pixels, rotation=rotation)
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
            _refuse_if_cut_short(path, failed)
            raise
        _refuse_if_cut_short(path, exc)  # the full decode skips a damaged packet: of a cut file, half a video
        rotation = probe_video(path).rotation if rotation is None else rotation
    if rotation and info.backend != "decord":  # decord 0.6 applies the display matrix itself
        frames = rotate_frames(frames, rotation)
    return frames, replace(info, width=int(frames.shape[2]), height=int(frames.shape[1]), rotation=rotation), indices


def _refuse_if_cut_short(path: Path, cause: Exception) -> None:
    """A file cut short is an upload or a copy that did not finish. Checked where the sparse path failed (its seeks
    reach the clip's last frames, which a cut file lacks), so a whole file never pays for the box walk."""
    if (cut := mp4_cut_short(path)) is not None:
        raise Truncated(f"{path.name}: the file is cut short ({cut}): an upload or a copy that did not finish?",
                        "truncated") from cause


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


def read_clip(path: Path, spec: Preprocessing, *, max_pixels: int | None = None,
              rotation: int | None = None) -> tuple[np.ndarray, VideoInfo, list[int]]:
    """The test-time clip of ``path``: uint8 [num_seg, H, W, 3] at the manifest's sampling rule."""
    return read_frames(path, lambda count: test_indices(count, spec.num_seg, spec.sampling), max_pixels=max_pixels,
                       rotation=rotation)
