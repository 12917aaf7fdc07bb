"""PaddleVideo list files: both formats, prefixes, and errors that name the line."""

from pathlib import Path

import pytest

from training.listfile import ListFileError, parse_list


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.list"
    path.write_text(text)
    return path


def test_video_list_with_prefix_and_suffix(tmp_path: Path) -> None:
    path = _write(tmp_path, "abseiling/x.mp4 0\n\n  my dir/clip 7  \n")
    samples = parse_list(path, "videos", data_prefix="/data", suffix=".avi")
    assert [(str(s.path), s.label) for s in samples] == [("/data/abseiling/x.mp4.avi", 0), ("/data/my dir/clip.avi", 7)]


def test_frame_list(tmp_path: Path) -> None:
    path = _write(tmp_path, "abseiling/_4YTwq0-73Y_000044_000054.mp4 300 0\n")
    (sample,) = parse_list(path, "frames")
    assert (sample.path, sample.num_frames, sample.label) == (Path("abseiling/_4YTwq0-73Y_000044_000054.mp4"), 300, 0)


@pytest.mark.parametrize(
    ("fmt", "text", "message"),
    [
        ("videos", "a.mp4 0\nb.mp4\n", r"train.list:2: expected '<path> <label>'"),
        ("videos", "a.mp4 0\n\nb.mp4 x\n", r"train.list:3: label must be an integer, got 'x'"),
        ("frames", "dir 30 1\ndir 3x 1\n", r"train.list:2: num_frames must be an integer"),
        ("videos", "a.mp4 -1\n", r"train.list:1: label must be >= 0"),
        ("videos", "a.mp4 9\n", r"train.list:1: label 9 is outside 0..3"),
        ("videos", "a.mp4 3\nb.mp4 4\n", r"train.list:2: label 4 is outside 0..3"),
        ("videos", "\n# only a comment\n", r"train.list: the list has no samples"),
    ],
)
def test_errors_name_the_line(tmp_path: Path, fmt: str, text: str, message: str) -> None:
    with pytest.raises(ListFileError, match=message):
        parse_list(_write(tmp_path, text), fmt, num_classes=4)  # type: ignore[arg-type]


def test_a_bom_is_not_part_of_the_first_path_and_another_encoding_names_the_list(tmp_path: Path) -> None:
    """A Windows editor's BOM made the first clip 'not found' every epoch, invisibly; a Latin-1 list failed with a
    bare codec error naming no file."""
    path = tmp_path / "train.list"
    path.write_bytes("\ufeffclip_0.mp4 0\nclip_1.mp4 1\n".encode())
    assert [str(s.path) for s in parse_list(path, "videos")] == ["clip_0.mp4", "clip_1.mp4"]
    path.write_bytes("caf\u00e9.mp4 0\n".encode("latin-1"))
    with pytest.raises(ListFileError, match=r"train\.list: not UTF-8 text \(invalid continuation byte at byte 3\); "
                                            r"save the list as UTF-8"):
        parse_list(path, "videos")
