"""Frame extraction: every frame of every video, scaled as the test pipeline does, into PaddleVideo folders."""

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.contract.preprocess import preprocess_clip, scale
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
    return root


def test_every_frame_is_scaled_like_the_test_pipeline_and_listed(video_set: Path, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        out_list = extract_frames(video_set / "train.list", tmp_path, data_prefix=str(video_set), short_side=48,
                                  workers=1)
    assert out_list == tmp_path / "train.list"
    assert out_list.read_text().splitlines() == ["videos/a 24 3", "videos/b 13 0"]
    assert "broken.mp4" in caplog.text  # reported by path, left out of the list
    decoded, _, _ = read_frames(video_set / "videos" / "b.mp4", lambda count: range(count))
    for i in (0, 12):
        stored = np.asarray(Image.open(tmp_path / "videos" / "b" / f"img_{i + 1:05d}.jpg"))
        expected = np.asarray(scale(Image.fromarray(decoded[i]), 48))
        assert stored.shape == expected.shape == (64, 48, 3)
        assert np.abs(stored.astype(int) - expected).mean() < 2.0  # JPEG rounding only
    assert not (tmp_path / "videos" / "b" / "img_00014.jpg").exists()


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
    reference = preprocess_clip(np.stack([np.asarray(Image.open(tmp_path / f"videos/a/img_{i:05d}.jpg"))
                                          for i in (4, 10, 16, 22)]), from_frames.cfg.preprocessing())
    np.testing.assert_array_equal(frames_clip, reference)  # centre-of-segment frames of 24 with 4 segments


def test_a_complete_extraction_is_reused_and_a_changed_list_redone(video_set: Path, tmp_path: Path) -> None:
    extract_frames(video_set / "train.list", tmp_path, data_prefix=str(video_set), short_side=48, workers=1)
    marker = tmp_path / "videos" / "a" / "img_00001.jpg"
    marker.write_bytes(b"left alone")
    extract_frames(video_set / "train.list", tmp_path, data_prefix=str(video_set), short_side=48, workers=1)
    assert marker.read_bytes() == b"left alone"
    extract_frames(video_set / "train.list", tmp_path, data_prefix=str(video_set), short_side=40, workers=1)
    assert Image.open(marker).size == (53, 40)  # another size: extracted again


def test_videos_sharing_a_stem_get_their_own_folders_and_a_repeated_one_shares(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "v").mkdir(parents=True)
    make_video(src / "v" / "a.mp4", num_frames=10, width=64, height=48, seed=1)
    make_video(src / "v" / "a.mkv", num_frames=14, width=64, height=48, seed=2)
    (src / "list.txt").write_text("v/a.mp4 0\nv/a.mkv 1\nv/a.mp4 2\n")
    out = extract_frames(src / "list.txt", tmp_path / "out", data_prefix=str(src), workers=2)
    assert out.read_text().splitlines() == ["v/a_mp4 10 0", "v/a_mkv 14 1", "v/a_mp4 10 2"]
    assert len(list((tmp_path / "out" / "v" / "a_mkv").glob("img_*.jpg"))) == 14


def test_extraction_refuses_to_overwrite_its_own_video_list(video_set: Path) -> None:
    before = (video_set / "train.list").read_text()
    with pytest.raises(ValueError, match="would overwrite the video list"):
        extract_frames(video_set / "train.list", video_set, data_prefix=str(video_set), workers=1)
    assert (video_set / "train.list").read_text() == before


def test_long_videos_are_decoded_a_chunk_at_a_time_with_every_frame_in_order(video_set: Path) -> None:
    from training.frames import decoded_chunks

    video = video_set / "videos" / "a.mp4"
    chunks = list(decoded_chunks(video, chunk=5))
    assert [len(c) for c in chunks] == [5, 5, 5, 5, 4]
    whole, _, _ = read_frames(video, lambda count: range(count))
    np.testing.assert_array_equal(np.concatenate(chunks), whole)
