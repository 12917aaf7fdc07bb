"""Sparse decoding: decord's exact pixels and frame numbering, from fewer decoded frames."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import service.sparse_decode as sparse
from service.contract import sampling
from service.decode_errors import LimitExceeded
from service.decoding import read_frames, read_frames_decord, read_frames_pyav, rotate_frames
from tests.videos import pattern_frames, remux, with_cover_stream, write_video

# B-frames (x264's default pyramid) are what makes non-reference frames to skip; ultrafast has none.
_BFRAMES = {"preset": "veryfast", "bf": "3", "g": "12", "keyint_min": "12", "sc_threshold": "0"}
_VFR_PTS = [0, 40, 80, 100, 300, 310, 320, 700, 720, 1000, 1010, 1500, 1540, 1580, 1600, 1700]

CASES: dict[str, dict[str, object]] = {
    "bframes_gop12": {"options": _BFRAMES},
    "open_gop": {"options": {**_BFRAMES, "x264-params": "open-gop=1"}},
    "one_keyframe": {"options": {**_BFRAMES, "g": "250", "keyint_min": "250"}},
    "no_bframes": {},
    "vfr": {"options": _BFRAMES, "pts": _VFR_PTS},
    "with_audio": {"options": _BFRAMES, "audio": True},
}
PICKS: dict[str, Callable[[int], list[int]]] = {
    "test": lambda n: sampling.test_indices(n, 8),
    "train": lambda n: sampling.train_indices(n, 8, np.random.default_rng(5)),
    "unordered_repeats": lambda n: [n - 1, 3, 3, 0, n // 2, 3],
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sparse")
    out = {}
    for name, kwargs in CASES.items():
        count = len(_VFR_PTS) if name == "vfr" else 60
        out[name] = write_video(root / f"{name}.mp4", pattern_frames(count, 96, 64, seed=len(name)), **kwargs)
    return out


@pytest.mark.parametrize("pick", PICKS)
@pytest.mark.parametrize("case", CASES)
def test_pixels_and_numbering_equal_a_full_decode(videos: dict[str, Path], case: str, pick: str) -> None:
    """The reference decodes every frame in order with PyAV and counts them; sparse must agree exactly."""
    want, want_info, want_idx = read_frames_pyav(videos[case], PICKS[pick])
    got, info, idx = sparse.read_frames_sparse(videos[case], PICKS[pick])
    assert (info.num_frames, idx) == (want_info.num_frames, want_idx)
    assert got.shape == want.shape
    assert np.array_equal(got, want)


@pytest.mark.parametrize("case", [c for c in CASES if c != "open_gop"])
def test_pixels_equal_decord(videos: dict[str, Path], case: str) -> None:
    """Models trained on decord's frames see the same pixels. (decord 0.6 numbers the frames of an open-GOP
    stream wrongly, returning later frames than asked; sparse decoding gets those right, see the next test.)"""
    want, _, _ = read_frames_decord(videos[case], PICKS["test"])
    got, _, _ = sparse.read_frames_sparse(videos[case], PICKS["test"])
    assert np.array_equal(got, want)


def test_open_gop_returns_the_frames_asked_for(videos: dict[str, Path]) -> None:
    encoded = pattern_frames(60, 96, 64, seed=len("open_gop")).astype(np.int16)
    frames, _, indices = sparse.read_frames_sparse(videos["open_gop"], PICKS["test"])
    nearest = [int(np.argmin(np.abs(encoded - f).mean(axis=(1, 2, 3)))) for f in frames]
    assert nearest == indices


def _count_decoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seen: list[int] = []
    check = sparse._Decoder._check

    def counting(self: sparse._Decoder, frame: object) -> None:
        seen.append(1)
        check(self, frame)  # type: ignore[arg-type]

    monkeypatch.setattr(sparse._Decoder, "_check", counting)
    return seen


@pytest.mark.parametrize("case", ["bframes_gop12", "one_keyframe"])
def test_decodes_only_part_of_the_stream(videos: dict[str, Path], case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Non-reference frames that aren't kept are dropped, and whole runs are skipped across keyframes."""
    seen = _count_decoded(monkeypatch)
    frames, info, _ = sparse.read_frames_sparse(videos[case], PICKS["test"])
    assert len(frames) == 8
    assert 8 <= len(seen) < 0.8 * info.num_frames, f"decoded {len(seen)} of {info.num_frames} frames"


def test_seeking_skips_more_than_dropping_alone(videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _count_decoded(monkeypatch)
    sparse.read_frames_sparse(videos["bframes_gop12"], lambda n: [5, n - 2])
    with_keys = len(seen)
    seen.clear()
    sparse.read_frames_sparse(videos["one_keyframe"], lambda n: [5, n - 2])
    assert with_keys < len(seen)


def test_read_frames_takes_the_sparse_path_and_rotates(tmp_path: Path) -> None:
    path = write_video(tmp_path / "r.mp4", pattern_frames(30, 64, 48), rotation=90, options=_BFRAMES)
    frames, info, _ = read_frames(path, PICKS["test"])
    want = rotate_frames(read_frames_pyav(path, PICKS["test"])[0], 90)  # decord 0.6 fails on this rotation
    assert info.backend == "pyav-sparse"
    assert (info.rotation, info.width, info.height) == (90, 48, 64)
    assert np.array_equal(frames, want)


@pytest.mark.parametrize("pix_fmt", ["yuv420p10le", "yuv444p"])
@pytest.mark.parametrize("gop", ["closed", "open"])
def test_other_pixel_formats_are_decoded_sparsely_with_the_right_frames(tmp_path: Path, pix_fmt: str,
                                                                        gop: str) -> None:
    """10-bit and 4:4:4 (HDR phone video, screen captures) went to decord, whose seeking returns other frames of an
    open-GOP or trimmed stream under the right indices: they take the checked PyAV paths and equal a full decode."""
    options = {**_BFRAMES, **({"x264-params": "open-gop=1"} if gop == "open" else {})}
    path = write_video(tmp_path / "v.mp4", pattern_frames(72, 96, 64, seed=4), pix_fmt=pix_fmt, options=options)
    frames, info, idx = read_frames(path, PICKS["test"])
    want, want_info, want_idx = read_frames_pyav(path, PICKS["test"])
    assert info.backend in ("pyav-sparse", "pyav") and (info.num_frames, idx) == (want_info.num_frames, want_idx)
    assert np.array_equal(frames, want)


def test_frame_size_limit_is_enforced(videos: dict[str, Path]) -> None:
    with pytest.raises(LimitExceeded, match="exceeds the limit"):
        read_frames(videos["bframes_gop12"], PICKS["test"], max_pixels=96 * 64 - 1)


@pytest.fixture(scope="module")
def awkward(tmp_path_factory: pytest.TempPathFactory, videos: dict[str, Path]) -> dict[str, Path]:
    """Files whose timestamps or keyframes can't be trusted for sparse decoding."""
    root = tmp_path_factory.mktemp("awkward")
    open_gop = write_video(root / "og.mkv", pattern_frames(72, 96, 64, seed=5),
                           options={**_BFRAMES, "x264-params": "open-gop=1"})
    return {
        "avi_bframes": write_video(root / "b.avi", pattern_frames(48, 96, 64, seed=2), options=_BFRAMES),
        "mpeg_ps": write_video(root / "p.mpg", pattern_frames(48, 96, 64, seed=3), "mpeg1video", fmt="mpeg",
                               options={"bf": "2", "g": "9"}),
        "intra_refresh": write_video(root / "ir.mp4", pattern_frames(60, 96, 64, seed=7),
                                     options={"preset": "veryfast", "bf": "0", "g": "12",
                                              "x264-params": "intra-refresh=1"}),
        "edit_list": remux(videos["bframes_gop12"], root / "trim.mp4", shift_frames=1),
        "open_gop_cut": remux(open_gop, root / "cut.mkv", drop_before_key=1),
        "cover_stream": with_cover_stream(videos["bframes_gop12"], root / "cover.mkv"),
        "mpegts_bframes": write_video(root / "b.ts", pattern_frames(48, 96, 64, seed=8), fmt="mpegts",
                                      options=_BFRAMES),
        "hevc_ts_open_gop": write_video(root / "h.ts", pattern_frames(48, 96, 64, seed=6), "libx265", fmt="mpegts",
                                        options={"x265-params": "log-level=error:keyint=12:bframes=3:open-gop=1"}),
    }


@pytest.mark.parametrize("case", ["avi_bframes", "mpeg_ps", "intra_refresh", "edit_list", "open_gop_cut",
                                  "cover_stream", "mpegts_bframes", "hevc_ts_open_gop"])
def test_untrustworthy_streams_are_never_silently_wrong(awkward: dict[str, Path], case: str) -> None:
    """Every single frame and the test pick: sparse either equals a full decode or declines (SparseUnsupported)."""
    path = awkward[case]
    count = read_frames_pyav(path, lambda n: [0])[1].num_frames
    declined = 0
    for pick in [PICKS["test"], *[(lambda n, i=i: [i]) for i in range(count)]]:
        try:
            got, info, idx = sparse.read_frames_sparse(path, pick)
        except sparse.SparseUnsupported:
            declined += 1
            continue
        want, want_info, want_idx = read_frames_pyav(path, pick)
        assert (info.num_frames, idx) == (want_info.num_frames, want_idx)
        assert np.array_equal(got, want), f"{case}: frames {idx} differ from a full decode"
    if case in ("avi_bframes", "open_gop_cut", "cover_stream"):  # refused up front
        assert declined == count + 1


@pytest.mark.parametrize("case", ["intra_refresh", "edit_list", "open_gop_cut", "avi_bframes", "mpeg_ps",
                                  "mpegts_bframes", "hevc_ts_open_gop"])
def test_untrustworthy_timing_falls_back_to_a_full_decode(awkward: dict[str, Path], case: str) -> None:
    """decord seeks as well and gets these wrong (camcorder and OBS .ts, DivX .avi, DVD .mpg: other frames under
    the right indices, a plausible answer), so :func:`read_frames` decodes them in full with PyAV, or, for MPEG-TS
    and PS with a codec that restarts cleanly, reads on to each wanted stretch without seeking."""
    frames, info, idx = read_frames(awkward[case], PICKS["test"])
    every = _every_frame(awkward[case])
    assert info.backend in (("pyav-sparse", "pyav") if case.endswith(("_ts_open_gop", "ts_bframes")) else ("pyav",))
    assert (info.num_frames, idx) == (len(every), list(PICKS["test"](len(every))))
    assert np.array_equal(frames, every[idx])


def test_av1_is_decoded_sparsely_with_a_full_decodes_frames(tmp_path: Path) -> None:
    """AV1 (Android phones, Chrome's MediaRecorder): decord can't read it, and PyAV's full path decoded it twice."""
    path = write_video(tmp_path / "v.mp4", pattern_frames(60, 96, 64, seed=9), "libsvtav1",
                       options={"preset": "12", "g": "12"})
    frames, info, idx = read_frames(path, PICKS["test"])
    want, want_info, want_idx = read_frames_pyav(path, PICKS["test"])
    assert info.backend == "pyav-sparse" and (info.num_frames, idx) == (want_info.num_frames, want_idx)
    assert np.array_equal(frames, want)


@pytest.mark.parametrize("fmt", ["matroska", "webm"])
def test_the_frame_rate_and_duration_come_from_the_timestamps(tmp_path: Path, fmt: str) -> None:
    """Matroska's nominal rate can be its 1 ms timebase (MediaRecorder's WebM said 1000 fps, 0.06 s): 60 frames
    over about 3.5 s with a 1.5 s stall say about 17 fps and 3.5 s, as the timestamps do, on every decode path."""
    stamps = [round(i * 33.3) + (1500 if i >= 30 else 0) for i in range(60)]  # ms
    codec = "libvpx" if fmt == "webm" else "libx264"
    path = write_video(tmp_path / f"v.{'webm' if fmt == 'webm' else 'mkv'}", pattern_frames(60, 96, 64), codec,
                       fmt=fmt, pts=stamps)
    want = 59 / ((stamps[-1] - stamps[0]) / 1000)
    for reader in (read_frames, read_frames_pyav):
        _, info, _ = reader(path, PICKS["test"])
        assert info.fps == pytest.approx(want, rel=1e-3), (reader.__name__, info)
        assert info.duration_s == pytest.approx(60 / want, rel=1e-3)


def test_decord_refuses_frames_over_the_pixel_limit(videos: dict[str, Path]) -> None:
    with pytest.raises(LimitExceeded, match="exceeds the limit of"):
        read_frames_decord(videos["bframes_gop12"], PICKS["test"], max_pixels=1000)


def _with_declared_duration(src: Path, dst: Path, seconds: float) -> Path:
    """``src`` (Matroska) with its Segment Duration element rewritten: a header that lies, as broken muxers' do."""
    import struct

    data = bytearray(src.read_bytes())
    at = data.find(b"\x44\x89\x88")  # Duration, an 8-byte float in the default 1 ms timecode scale
    assert at > 0, "no 8-byte Duration element"
    data[at + 3:at + 11] = struct.pack(">d", seconds * 1000)
    dst.write_bytes(bytes(data))
    return dst


def test_the_duration_limit_goes_by_the_streams_timestamps_not_the_header(tmp_path: Path) -> None:
    from service.contract.manifest import Preprocessing
    from service.decode_worker import DecodeLimits, decode_task
    from service.probing import measured_duration_s, probe_video

    spec = Preprocessing(num_seg=4, short_side=64, crop_size=48)
    clip = write_video(tmp_path / "short.mkv", pattern_frames(40, 96, 64), fmt="matroska")  # 1.6 s at 25 fps
    says_ten_hours = _with_declared_duration(clip, tmp_path / "ten_hours.mkv", 36_000)
    assert probe_video(says_ten_hours).duration_s == pytest.approx(36_000)
    assert measured_duration_s(says_ten_hours) == pytest.approx(1.6)
    assert decode_task(str(says_ten_hours), spec, DecodeLimits(600, 10**7)).info.num_frames == 40  # was refused
    slow = write_video(tmp_path / "slow.mkv", pattern_frames(30, 96, 64), fmt="matroska", fps=1)  # 30 s
    says_a_second = _with_declared_duration(slow, tmp_path / "says_1s.mkv", 1)
    with pytest.raises(LimitExceeded, match=r"the video lasts 30\.0 s, over the limit of 10 s"):
        decode_task(str(says_a_second), spec, DecodeLimits(10, 10**7))  # was accepted


def test_running_out_of_memory_while_decoding_is_not_called_a_broken_file(videos: dict[str, Path],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A MemoryError (the worker's address-space cap) inside a decoder reached the client as "undecodable", and the
    worker, maybe half-initialised, served on: it must reach decode_worker, which answers it and retires."""
    def no_memory(*_: object, **__: object) -> None:
        raise MemoryError

    monkeypatch.setattr(sparse._Decoder, "feed", no_memory)
    with pytest.raises(MemoryError):
        read_frames(videos["bframes_gop12"], PICKS["test"])
    def declined(*_: object, **__: object) -> None:
        raise sparse.SparseUnsupported("a stream for decord")

    monkeypatch.setattr(sparse, "read_frames_sparse", declined)
    monkeypatch.setattr("decord.VideoReader", no_memory)
    with pytest.raises(MemoryError):
        read_frames(videos["bframes_gop12"], PICKS["test"])


def test_a_file_cut_short_says_so(tmp_path: Path) -> None:
    """A faststart MP4 cut in half (an upload that did not finish): every decoder failed on it with "Invalid data
    found when processing input"; whole, trimmed or fragmented files are not called cut short."""
    from service.decode_errors import Truncated
    from service.probing import mp4_cut_short

    whole = write_video(tmp_path / "whole.mp4", pattern_frames(40, 96, 64), container_options={"movflags": "faststart"})
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(Truncated, match=r"cut\.mp4: the file is cut short \(its mdat box holds \d+ bytes, \d+ are "
                                        r"there\): an upload or a copy that did not finish\?"):
        read_frames(cut, PICKS["test"])
    fragmented = write_video(tmp_path / "frag.mp4", pattern_frames(40, 96, 64),
                             container_options={"movflags": "frag_keyframe+empty_moov"})
    trimmed = remux(whole, tmp_path / "trim.mp4", shift_frames=2)
    mkv = write_video(tmp_path / "v.mkv", pattern_frames(10, 96, 64), fmt="matroska")
    junk = tmp_path / "junk.mp4"  # a file type box, then bytes that only look like a box's size and type
    junk.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 12 + b"junk" * 50)
    assert [mp4_cut_short(p) for p in (whole, fragmented, trimmed, mkv, junk)] == [None] * 5
    assert read_frames(whole, PICKS["test"])[1].num_frames == 40


def _every_frame(path: Path) -> np.ndarray:
    """The independent oracle: PyAV's whole decode of the stream, every frame in the order shown."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])


@pytest.mark.parametrize("case", ["avi_bframes", "mpeg_ps", "intra_refresh", "edit_list", "open_gop_cut",
                                  "mpegts_bframes"])
def test_the_full_pyav_decode_picks_from_what_the_decoder_shows(awkward: dict[str, Path], case: str) -> None:
    """One pass picks by the packet count; where the decoder shows another count (an edit list's hidden frames, a cut
    open GOP's leading ones) the picks follow what is shown, as a whole decode numbers them."""
    import av

    with av.open(str(awkward[case])) as container:
        packets = sum(1 for p in container.demux(container.streams.video[0]) if p.size)
    every = _every_frame(awkward[case])
    frames, info, idx = read_frames_pyav(awkward[case], PICKS["test"])
    assert info.num_frames == len(every) and idx == list(PICKS["test"](len(every)))
    assert np.array_equal(frames, every[idx])
    if case in ("edit_list", "open_gop_cut"):
        assert packets != len(every)  # the second pass is exercised


def test_mpeg_ts_whose_timestamps_jump_back_or_repeat_is_decoded_as_shown(tmp_path: Path) -> None:
    """Two recordings joined (``cat a.ts b.ts``): sorted timestamps numbered the frames otherwise than the decoder
    shows them (every returned frame was another one), and a repeat sent the file to decord (wrong frames too)."""
    late = write_video(tmp_path / "late.ts", pattern_frames(50, 96, 64, seed=1), fmt="mpegts",
                       options={"bf": "3", "g": "12"}, pts=[30_000 + 40 * i for i in range(50)])
    early = write_video(tmp_path / "early.ts", pattern_frames(3, 96, 64, seed=2), fmt="mpegts")
    joined = tmp_path / "joined.ts"
    joined.write_bytes(late.read_bytes() + early.read_bytes())
    twice = tmp_path / "twice.ts"
    twice.write_bytes(late.read_bytes() * 2)
    for path in (joined, twice):
        every = _every_frame(path)
        for pick in (PICKS["test"], lambda n: [0], lambda n: [n - 1]):
            frames, info, idx = read_frames(path, pick)
            assert info.backend == "pyav" and info.num_frames == len(every), (path.name, info)
            assert np.array_equal(frames, every[idx]), path.name


def test_an_upload_removed_mid_decode_is_a_decode_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request cancelled while its decode starts has its upload removed: the cut-short check after the decoders'
    failure opened the missing file, and its FileNotFoundError reached the worker as a bug of ours (a traceback)."""
    from service.decode_errors import DecodeError

    clip = write_video(tmp_path / "clip.mp4", pattern_frames(16, 64, 48))
    sparse_read = sparse.read_frames_sparse

    def remove_then_read(path: Path, *args: object, **kwargs: object) -> object:
        path.unlink()
        return sparse_read(path, *args, **kwargs)

    monkeypatch.setattr(sparse, "read_frames_sparse", remove_then_read)
    with pytest.raises(DecodeError, match="No such file or directory"):
        read_frames(clip, lambda count: sampling.test_indices(count, 4))


def test_a_video_over_the_pixel_limit_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    """TSM_MAX_VIDEO_PIXELS, through the worker's task as the server runs it (the header, then every frame)."""
    from service.contract.manifest import Preprocessing
    from service.decode_worker import DecodeLimits, decode_task

    clip = write_video(tmp_path / "big.mp4", pattern_frames(8, 96, 64))
    spec = Preprocessing(num_seg=4, short_side=48, crop_size=32)
    assert decode_task(str(clip), spec, DecodeLimits(600, 96 * 64)).info.width == 96  # at the limit
    with pytest.raises(LimitExceeded, match=r"frames of 96x64 exceed the limit of 6143 pixels"):
        decode_task(str(clip), spec, DecodeLimits(600, 96 * 64 - 1))
