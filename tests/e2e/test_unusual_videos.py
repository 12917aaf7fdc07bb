"""Valid but unusual videos classify (200) with the right facts; decord and PyAV agree where both decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import LiveServer
from tests.videos import unusual_videos

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, object]]]:
    return unusual_videos(tmp_path_factory.mktemp("unusual"))


NAMES = ["one_frame.mp4", "three_frames.mp4", "tiny_16x16.mp4", "odd_161x121.mp4", "uhd_3840x2160.mp4",
         "rotated_90.mp4", "rotated_270.mp4", "rotated_180.mp4", "vfr.mp4", "h264_10bit.mp4", "hevc.mp4",
         "hevc_10bit.mp4", "vp9.webm", "mpeg4.avi", "mjpeg.avi", "with_audio.mp4", "moov_at_end.mp4",
         "moov_at_start.mp4", "matroska.mkv", "bframes.ts", "av1.mp4", "animated.gif"]


@pytest.mark.parametrize("name", NAMES)
def test_unusual_video_classifies(server: LiveServer, corpus: dict[str, tuple[Path, dict[str, object]]],
                                  name: str) -> None:
    path, facts = corpus[name]
    with server.client() as http:
        r = http.post("/classify", files={"file": (name, path.read_bytes(), "application/octet-stream")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["predictions"]) == 5 and abs(sum(p["score"] for p in body["predictions"]) - 1) < 1e-6
    video = body["video"]
    for key, value in facts.items():
        assert video[key] == value, (key, video)
    assert len(video["sampled_indices"]) == 8 and max(video["sampled_indices"]) < video["num_frames"]


BOTH = ["one_frame.mp4", "odd_161x121.mp4", "rotated_180.mp4", "vfr.mp4", "hevc.mp4",
        "vp9.webm", "mpeg4.avi", "mjpeg.avi", "with_audio.mp4", "moov_at_start.mp4", "matroska.mkv"]


@pytest.mark.parametrize("name", BOTH)
def test_decord_and_pyav_pixels_identical(corpus: dict[str, tuple[Path, dict[str, object]]], name: str) -> None:
    """Where decord decodes, the PyAV fallback (rotated by us) gives the very same pixels."""
    from service.decoding import read_frames_decord, read_frames_pyav, rotate_frames
    from service.probing import probe_video

    path, _ = corpus[name]
    pick = lambda n: list(range(n))  # noqa: E731
    a, info_a, _ = read_frames_decord(path, pick)
    b, info_b, _ = read_frames_pyav(path, pick)
    b = rotate_frames(b, probe_video(path).rotation)
    assert info_a.num_frames == info_b.num_frames
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", [n for n in NAMES if "10bit" not in n])
def test_read_frames_equals_a_full_decode(corpus: dict[str, tuple[Path, dict[str, object]]], name: str) -> None:
    """Whichever decoder :func:`read_frames` picks (sparse for most of these), every frame equals PyAV decoding
    the whole stream, rotated upright."""
    from service.decoding import read_frames, read_frames_pyav, rotate_frames
    from service.probing import probe_video

    path, _ = corpus[name]
    pick = lambda n: list(range(n))  # noqa: E731
    frames, info, _ = read_frames(path, pick)
    want = rotate_frames(read_frames_pyav(path, pick)[0], probe_video(path).rotation)
    assert info.num_frames == len(want)
    np.testing.assert_array_equal(frames, want)


@pytest.mark.parametrize("name", ["tiny_16x16.mp4", "rotated_90.mp4", "rotated_270.mp4"])
def test_decord_failures_fall_back_to_pyav(corpus: dict[str, tuple[Path, dict[str, object]]], name: str) -> None:
    """decord 0.6 fails on these valid files; :func:`read_frames` falls back to PyAV instead of refusing them."""
    from service.decode_errors import DecodeError
    from service.decoding import read_frames, read_frames_decord

    path, _ = corpus[name]
    with pytest.raises(DecodeError):
        read_frames_decord(path, lambda n: [0])
    frames, info, _ = read_frames(path, lambda n: list(range(n)))
    assert info.backend in ("pyav", "pyav-sparse") and frames.shape[0] == info.num_frames


@pytest.mark.parametrize("name", ["h264_10bit.mp4", "hevc_10bit.mp4"])
def test_ten_bit_decord_and_pyav_close(corpus: dict[str, tuple[Path, dict[str, object]]], name: str) -> None:
    """10-bit: both decode, but decord's and PyAV's 10->8-bit RGB conversions differ (known, see the report).

    Not identical: up to ~12 levels on edges, about 1 level on average. The service is still
    deterministic per file (decord first, always), so training and serving see the same pixels.
    """
    from service.decoding import read_frames_decord, read_frames_pyav

    path, _ = corpus[name]
    a, _, _ = read_frames_decord(path, lambda n: list(range(n)))
    b, _, _ = read_frames_pyav(path, lambda n: list(range(n)))
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 16 and diff.mean() < 1.5, (diff.max(), diff.mean())


@pytest.mark.xfail(strict=True, reason="decord 0.6 bundles FFmpeg 4 and PyAV FFmpeg 7: their swscale 10->8-bit "
                   "RGB conversions differ by up to ~13 levels, and no PyAV interpolation or filter graph we tried "
                   "reproduces decord's bytes (8-bit sources are identical)")
@pytest.mark.parametrize("name", ["h264_10bit.mp4"])
def test_ten_bit_pixels_identical(corpus: dict[str, tuple[Path, dict[str, object]]], name: str) -> None:
    from service.decoding import read_frames_decord, read_frames_pyav

    path, _ = corpus[name]
    a, _, _ = read_frames_decord(path, lambda n: list(range(n)))
    b, _, _ = read_frames_pyav(path, lambda n: list(range(n)))
    np.testing.assert_array_equal(a, b)


def test_pyav_fallback_keeps_only_the_picked_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PyAV path converts and holds only the picked frames, not the whole video (200 RGB frames: 46 MB)."""
    from service import decoding
    from tests.videos import pattern_frames, write_video

    path = write_video(tmp_path / "long.mp4", pattern_frames(200, 320, 240))
    converted: list[tuple[int, int]] = []
    real = decoding._to_rgb

    def spy(frame: object) -> np.ndarray:
        out = real(frame)
        converted.append(out.shape[:2])
        return out

    monkeypatch.setattr(decoding, "_to_rgb", spy)
    frames, info, indices = decoding.read_frames_pyav(path, lambda n: [0, n // 2, n // 2, n - 1])
    assert info.num_frames == 200 and frames.shape == (4, 240, 320, 3) and indices == [0, 100, 100, 199]
    assert converted == [(240, 320)] * 3  # 3 distinct picked frames, each converted once


def test_an_animated_gif_sent_as_browsers_send_it_classifies(server: LiveServer,
                                                            corpus: dict[str, tuple[Path, dict[str, object]]]) -> None:
    """Browsers upload a GIF as image/gif (it was refused with 415 "not a video")."""
    data = corpus["animated.gif"][0].read_bytes()
    with server.client() as http:
        for response in (http.post("/classify", content=data, headers={"content-type": "image/gif"}),
                         http.post("/classify", files={"file": ("a.gif", data, "image/gif")})):
            assert response.status_code == 200, response.text
            assert response.json()["video"]["num_frames"] == 10


def test_a_gif_of_one_frame_is_a_picture_not_a_clip(server: LiveServer, tmp_path: Path) -> None:
    from tests.videos import pattern_frames, write_video

    still = write_video(tmp_path / "still.gif", pattern_frames(1, 64, 48), "gif", pix_fmt="rgb8", fmt="gif")
    with server.client() as http:
        r = http.post("/classify", content=still.read_bytes(), headers={"content-type": "image/gif"})
    assert r.status_code == 422 and "the file is an image (gif), not a video" in r.json()["detail"]
