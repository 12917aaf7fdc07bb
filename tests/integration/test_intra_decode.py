"""Containers that used to be decoded in full: intra-only streams (a camera's MJPEG AVI) decode only their kept
packets, FLV's H.264 and AVI's B-frame-free profiles read on to each wanted stretch; all with a full decode's pixels
and numbering, and every stream that reorders frames still decoded in full."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import service.intra_decode as intra
import service.sparse_decode as sparse
from service.decode_errors import LimitExceeded
from service.decoding import read_frames, read_frames_pyav
from tests.videos import pattern_frames, write_video

# name: (codec, container, pixel format, with an audio track)
INTRA: dict[str, tuple[str, str, str, bool]] = {
    "mjpeg_avi": ("mjpeg", "avi", "yuvj420p", False),
    "mjpeg_avi_audio": ("mjpeg", "avi", "yuvj422p", True),
    "mjpeg_asf": ("mjpeg", "asf", "yuvj420p", False),
    "huffyuv_avi": ("huffyuv", "avi", "yuv422p", False),
}
SUFFIX = {"avi": ".avi", "asf": ".asf"}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("intra")
    out = {name: write_video(root / f"{name}{SUFFIX[fmt]}", pattern_frames(45, 96, 64, seed=i), codec,
                             pix_fmt=pix_fmt, fmt=fmt, audio=audio)
           for i, (name, (codec, fmt, pix_fmt, audio)) in enumerate(INTRA.items())}
    frames = pattern_frames(60, 96, 64, seed=4)
    for name, codec, options in [("baseline_avi", "libx264", {"profile": "baseline", "g": "12"}),
                                 ("simple_profile_avi", "mpeg4", {"g": "12"}),
                                 ("high_bframes_avi", "libx264", {"preset": "veryfast", "bf": "3", "g": "12"}),
                                 ("asp_bframes_avi", "mpeg4", {"g": "12", "bf": "2"})]:
        out[name] = write_video(root / f"{name}.avi", frames, codec, fmt="avi", options=options)
    out["h264_flv"] = write_video(root / "b.flv", pattern_frames(75, 96, 64, seed=9), fmt="flv", audio=True,
                                  options={"preset": "veryfast", "bf": "3", "g": "25", "sc_threshold": "0"})
    return out


def _picks(count: int) -> list[Callable[[int], list[int]]]:
    """The test pick, an unordered one with repeats, and every single frame."""
    return [lambda n: list(np.linspace(0, n - 1, 8).round().astype(int)), lambda n: [n - 1, 3, 3, 0, n // 2],
            *[(lambda n, i=i: [i]) for i in range(count)]]


def _count_calls(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[int]:
    seen: list[int] = []
    real = getattr(module, name)

    def counting(*args: object, **kwargs: object) -> object:
        seen.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return seen


@pytest.mark.parametrize("case", INTRA)
def test_intra_only_streams_decode_only_the_kept_packets(files: dict[str, Path], case: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pick gives a full PyAV decode's frames (the path these containers took before), from its packets."""
    count = read_frames_pyav(files[case], lambda n: [0])[1].num_frames
    decoded = _count_calls(monkeypatch, intra, "check_frame_size")  # once a decoded frame
    for pick in _picks(count):
        decoded.clear()
        frames, info, idx = read_frames(files[case], pick)
        want, want_info, want_idx = read_frames_pyav(files[case], pick)
        assert info.backend == "pyav-intra"
        assert (info.num_frames, info.fps, idx) == (want_info.num_frames, want_info.fps, want_idx)
        assert np.array_equal(frames, want), f"{case}: frames {idx}"
        assert len(decoded) == len(set(idx))


def test_flv_h264_reads_on_to_the_wanted_stretches(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """FLV stores real presentation times: its H.264 takes the forward sparse path, equal to a full decode."""
    path = files["h264_flv"]
    count = read_frames_pyav(path, lambda n: [0])[1].num_frames
    for pick in _picks(count):
        frames, info, idx = read_frames(path, pick)
        want, want_info, want_idx = read_frames_pyav(path, pick)
        assert info.backend == "pyav-sparse"
        assert (info.num_frames, idx) == (want_info.num_frames, want_idx)
        assert np.array_equal(frames, want), f"frames {idx}"
    decoded = _count_calls(monkeypatch, sparse, "check_frame_size")
    frames, info, _ = read_frames(path, lambda n: [2, n - 3])
    assert len(frames) == 2 and len(decoded) < 0.5 * info.num_frames


def test_an_intra_stream_that_misbehaves_is_decoded_in_full(files: dict[str, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A packet that does not decode to exactly one frame (what frame threads or a broken packet would do) declines
    the intra path: the caller decodes the whole stream, never returning a neighbour's frame under this index."""
    def none_decoded(path: Path, wanted: set[int], max_pixels: int | None) -> dict[int, np.ndarray]:
        raise intra.IntraUnsupported("packet 3 decoded to 0 frames")  # what the second pass says then

    monkeypatch.setattr(intra, "_decode_packets", none_decoded)
    with pytest.raises(sparse.SparseUnsupported) as declined:
        sparse.read_frames_sparse(files["mjpeg_avi"], lambda n: [3])
    assert declined.value.timing
    frames, info, _ = read_frames(files["mjpeg_avi"], lambda n: [3])
    assert info.backend == "pyav" and np.array_equal(frames, read_frames_pyav(files["mjpeg_avi"], lambda n: [3])[0])


def test_the_pixel_limit_holds_on_the_intra_path(files: dict[str, Path]) -> None:
    with pytest.raises(LimitExceeded):
        read_frames(files["mjpeg_avi"], lambda n: [0], max_pixels=96 * 64 - 1)
    assert read_frames(files["mjpeg_avi"], lambda n: [0], max_pixels=96 * 64)[1].backend == "pyav-intra"


def test_avi_without_b_frames_reads_on_to_the_wanted_stretches(files: dict[str, Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A camera's Baseline H.264 AVI: decode order is presentation order. (Not MPEG-4 Simple Profile: DivX marks a
    dropped frame with a packet that shows none, so its packets don't count the frames; it is decoded in full.)"""
    assert read_frames(files["simple_profile_avi"], lambda n: [0])[1].backend == "pyav"
    path, case = files["baseline_avi"], "baseline_avi"
    count = read_frames_pyav(path, lambda n: [0])[1].num_frames
    for pick in _picks(count):
        frames, info, idx = read_frames(path, pick)
        want, want_info, want_idx = read_frames_pyav(path, pick)
        assert info.backend == "pyav-sparse"
        assert (info.num_frames, info.fps, idx) == (want_info.num_frames, want_info.fps, want_idx)
        assert np.array_equal(frames, want), f"{case}: frames {idx}"
    decoded = _count_calls(monkeypatch, sparse, "check_frame_size")
    frames, info, _ = read_frames(path, lambda n: [2, n - 3])
    assert len(frames) == 2 and len(decoded) < 0.5 * info.num_frames


@pytest.mark.parametrize("case", ["high_bframes_avi", "asp_bframes_avi"])
def test_avi_that_reorders_is_decoded_in_full_even_if_its_profile_lied(files: dict[str, Path], case: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """AVI numbers B-frame streams in decode order (read forward, 45 of 60 single frames of the High one came back
    wrong): a profile that allows B-frames is decoded in full, and one let through on its header's word never
    returns a wrong frame: once frames come out in another order than their packets went in, it is declined."""
    path = files[case]
    count = read_frames_pyav(path, lambda n: [0])[1].num_frames
    assert read_frames(path, lambda n: [0])[1].backend == "pyav"
    monkeypatch.setattr(sparse, "NO_REORDER_PROFILES", {("h264", "High"), ("mpeg4", "Advanced Simple Profile")})
    declined = 0
    for i in range(count):
        try:
            frames, _, _ = sparse.read_frames_sparse(path, lambda n, i=i: [i])
        except sparse.SparseUnsupported as refused:
            assert refused.timing
            declined += 1
            continue
        assert np.array_equal(frames, read_frames_pyav(path, lambda n, i=i: [i])[0]), f"{case}: frame {i}"
    assert declined >= count * 3 // 4  # a keyframe may come out before the reordering shows, and is right
    frames, info, _ = read_frames(path, _picks(count)[0])
    assert info.backend == "pyav" and np.array_equal(frames, read_frames_pyav(path, _picks(count)[0])[0])
