"""Frame extraction: every frame of every video, scaled as the test pipeline does, into PaddleVideo folders."""

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.contract.preprocess import preprocess_clip, scale
from service.decode_errors import why
from service.decoding import read_frames
from tests.videos import make_video
from training.config import load_config
from training.data import ClipDataset
from training.frames import extract_frames
from training.listfile import parse_list


@pytest.fixture(scope="module")
def video_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("video_set")
    (root / "videos").mkdir()
    make_video(root / "videos" / "a.mp4", num_frames=24, width=160, height=120, seed=1)
    make_video(root / "videos" / "b.mp4", num_frames=13, width=96, height=128, seed=2)  # portrait: width is short
    (root / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 50)
    (root / "train.list").write_text("videos/a.mp4 3\nvideos/broken.mp4 1\nvideos/b.mp4 0\n")
    (root / "good.list").write_text("videos/a.mp4 3\nvideos/b.mp4 0\n")
    return root


def test_every_frame_is_scaled_like_the_test_pipeline_and_listed(video_set: Path, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        out_list = extract_frames(video_set / "train.list", tmp_path, data_prefix=str(video_set), short_side=48,
                                  workers=1)
    assert out_list == tmp_path / "train.list"
    assert out_list.read_text().splitlines() == ["videos/a.mp4 24 3", "videos/b.mp4 13 0"]  # PaddleVideo's K400
    assert "broken.mp4" in caplog.text  # reported by path, left out of the list
    decoded, _, _ = read_frames(video_set / "videos" / "b.mp4", lambda count: range(count))
    for i in (0, 12):
        stored = np.asarray(Image.open(tmp_path / "videos" / "b.mp4" / f"img_{i + 1:05d}.jpg"))
        expected = np.asarray(scale(Image.fromarray(decoded[i]), 48))
        assert stored.shape == expected.shape == (64, 48, 3)
        assert np.abs(stored.astype(int) - expected).mean() < 2.0  # JPEG rounding only
    assert not (tmp_path / "videos" / "b.mp4" / "img_00014.jpg").exists()


def test_test_time_clip_from_frames_matches_the_one_from_the_video(video_set: Path, tmp_path: Path) -> None:
    frames_list = extract_frames(video_set / "train.list", tmp_path, data_prefix=str(video_set), short_side=48,
                                 workers=2)
    common = ["data.short_side=48", "data.crop_size=40", "model.num_seg=4"]
    from_video = ClipDataset(load_config("tiny", [*common, f"data.data_prefix={video_set}"]),
                             str(video_set / "train.list"), train=False)
    from_frames = ClipDataset(load_config("tiny", [*common, "data.format=frames", f"data.data_prefix={tmp_path}"]),
                              str(frames_list), train=False)
    video_clip, frames_clip = from_video[0][0], from_frames[0][0]
    assert video_clip is not None and frames_clip is not None and video_clip.shape == (4, 3, 40, 40)
    assert np.abs(video_clip - frames_clip).mean() < 0.05  # normalised units: ~3 grey levels of 255 at most
    assert from_frames[1][1] == 0 and parse_list(frames_list, "frames")[1].num_frames == 13
    reference = preprocess_clip(np.stack([np.asarray(Image.open(tmp_path / f"videos/a.mp4/img_{i:05d}.jpg"))
                                          for i in (4, 10, 16, 22)]), from_frames.cfg.preprocessing())
    np.testing.assert_array_equal(frames_clip, reference)  # centre-of-segment frames of 24 with 4 segments


def test_folders_are_named_as_the_list_names_the_videos_without_the_appended_suffix(video_set: Path,
                                                                                  tmp_path: Path) -> None:
    """UCF-101's video lists leave out the .avi that data.suffix appends, and its frame lists name the folders so;
    a video outside the prefix gets its index and name."""
    (tmp_path / "bare.list").write_text("videos/a 3\n")
    out = extract_frames(tmp_path / "bare.list", tmp_path / "ucf", data_prefix=str(video_set), workers=1,
                         suffix=".mp4")
    assert out.read_text() == "videos/a 24 3\n" and (tmp_path / "ucf" / "videos" / "a" / "img_00024.jpg").is_file()
    (tmp_path / "outside.list").write_text(f"{video_set / 'videos' / 'b.mp4'} 0\n")
    out = extract_frames(tmp_path / "outside.list", tmp_path / "abs", data_prefix=str(tmp_path), workers=1)
    assert out.read_text() == "000000_b.mp4 13 0\n"


def test_a_listed_path_that_climbs_out_of_the_prefix_is_extracted_inside_the_output(video_set: Path,
                                                                                    tmp_path: Path) -> None:
    """``../videos/b.mp4`` named as listed would write its frames outside the output folder."""
    (tmp_path / "up.list").write_text("../videos/b.mp4 0\n")
    out = extract_frames(tmp_path / "up.list", tmp_path / "out" / "frames", data_prefix=str(video_set / "videos"),
                         workers=1)
    assert out.read_text() == "000000_b.mp4 13 0\n"
    assert (tmp_path / "out" / "frames" / "000000_b.mp4" / "img_00013.jpg").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["frames"]


def test_a_video_is_decoded_in_chunks_to_its_last_frame(video_set: Path) -> None:
    """Frames are decoded a chunk at a time (long videos never sit in memory whole): every chunk, the last too."""
    from training.frames import decoded_chunks

    video = video_set / "videos" / "a.mp4"  # 24 frames
    with_chunks = list(decoded_chunks(video, chunk=5))
    assert [len(c) for c in with_chunks] == [5, 5, 5, 5, 4]
    whole, _, _ = read_frames(video, lambda count: range(count))
    np.testing.assert_array_equal(np.concatenate(with_chunks), whole)


def test_frames_extracted_beside_their_videos_would_replace_them_and_are_refused(video_set: Path,
                                                                                 tmp_path: Path) -> None:
    listed = tmp_path / "good.list"
    listed.write_text((video_set / "good.list").read_text())
    before = sorted(p.name for p in video_set.rglob("*"))
    with pytest.raises(ValueError, match=r"frame folder .*a\.mp4 would replace the video of that name"):
        extract_frames(listed, video_set, data_prefix=str(video_set), workers=1)
    assert sorted(p.name for p in video_set.rglob("*")) == before


def test_a_complete_extraction_is_reused_and_a_changed_list_redone(video_set: Path, tmp_path: Path) -> None:
    extract_frames(video_set / "good.list", tmp_path, data_prefix=str(video_set), short_side=48, workers=1)
    marker = tmp_path / "videos" / "a.mp4" / "img_00001.jpg"
    marker.write_bytes(b"left alone")
    extract_frames(video_set / "good.list", tmp_path, data_prefix=str(video_set), short_side=48, workers=1)
    assert marker.read_bytes() == b"left alone"
    extract_frames(video_set / "good.list", tmp_path, data_prefix=str(video_set), short_side=40, workers=1)
    assert Image.open(marker).size == (53, 40)  # another size: extracted again


def test_an_extraction_with_a_skipped_video_is_done_again(video_set: Path, tmp_path: Path) -> None:
    extract_frames(video_set / "train.list", tmp_path, data_prefix=str(video_set), short_side=48, workers=1)
    assert not (tmp_path / "train.list.json").exists()  # broken.mp4 was skipped: not complete
    marker = tmp_path / "videos" / "a.mp4" / "img_00001.jpg"
    marker.write_bytes(b"overwritten by the rerun")
    extract_frames(video_set / "train.list", tmp_path, data_prefix=str(video_set), short_side=48, workers=1)
    assert Image.open(marker).size == (64, 48)


def test_a_list_none_of_whose_videos_decode_is_an_error_and_a_rerun_extracts(
        video_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)  # the list's relative paths point nowhere from here
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match=r"none of the 2 videos .* relative to"):
        extract_frames(video_set / "good.list", tmp_path / "out", workers=1)
    assert "videos/a.mp4: not found" in caplog.text  # each still reported by path (once), as not found
    assert not (tmp_path / "out" / "good.list").exists() and not (tmp_path / "out" / "good.list.json").exists()
    monkeypatch.chdir(video_set)
    out = extract_frames(video_set / "good.list", tmp_path / "out", workers=1)
    assert out.read_text().splitlines() == ["videos/a.mp4 24 3", "videos/b.mp4 13 0"]


def test_the_decode_error_of_a_bare_file_name_keeps_its_dots(video_set: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    monkeypatch.chdir(video_set / "videos")
    (tmp_path / "bare.list").write_text("broken.mp4 0\na.mp4 1\n")
    with caplog.at_level(logging.WARNING):
        extract_frames(tmp_path / "bare.list", tmp_path / "out", workers=1)
    assert "skipped video broken.mp4: the video could not be decoded (Invalid data found" in caplog.text
    assert "brokenmp4" not in caplog.text and caplog.text.count("broken.mp4") == 1


@pytest.mark.parametrize("path", ["clip_6.mp4", "/clip_6.mp4", "/srv/up.d/x/clip_6.mp4"])
def test_why_removes_only_a_real_folder(path: str) -> None:
    text = why(OSError(f"{path}: bad header (1/2 readers tried, v1.2)"), Path(path))
    assert text == "clip_6.mp4: bad header (1/2 readers tried, v1.2)"  # "." and "/" are no folder to strip


def test_why_drops_ffmpegs_error_number_and_pyavs_file_name() -> None:
    # our message names the file first; PyAV's "[Errno 1094995529] ...: '<file>'" would name it twice
    error = OSError("[Errno 1094995529] Invalid data found when processing input: '/srv/up/clip.mp4'")
    assert why(error, Path("/srv/up/clip.mp4")) == "Invalid data found when processing input"


def test_why_removes_the_folder_mentioned_on_its_own() -> None:
    # clients see this text: the server's upload folder stays hidden
    assert why(OSError("cannot read /srv/up.d/x/ or /srv/up.d/x"), Path("/srv/up.d/x/clip.mp4")) == "cannot read  or "
