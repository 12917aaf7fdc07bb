"""One clip's failure, whatever raises it, is that clip's: reported by path and skipped, in training and in frame
extraction. An exception out of a dataset's ``__getitem__`` stopped Paddle's loader instead: a traceback naming no
clip with worker processes, a hang without them, and a hang at exit now and then."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from training.config import load_config
from training.data import ClipDataset
from training.frames import extract_frames
from training.synthetic import write_mp4


def bomb_png(path: Path, side: int = 14000) -> None:
    """A real PNG whose header claims ``side`` x ``side`` pixels: PIL refuses it as a decompression bomb."""
    Image.new("RGB", (4, 4)).save(path, format="PNG")
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", side, side)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    path.write_bytes(bytes(data))


def ffmpeg_out_of_memory(path: Path, *_: object, **__: object) -> None:
    """What PyAV raises for some corrupt MP4s (found by fuzzing): FFmpeg's ENOMEM, a MemoryError and no OSError."""
    raise av.error.MemoryError(12, "Cannot allocate memory", str(path))


def test_a_frame_pil_refuses_as_a_bomb_skips_its_clip(tmp_path: Path) -> None:
    for name in ("good", "bomb"):
        (tmp_path / name).mkdir()
        for i in range(1, 5):
            Image.new("RGB", (32, 24), (40 * i, 0, 0)).save(tmp_path / name / f"img_{i:05d}.jpg")
    bomb_png(tmp_path / "bomb" / "img_00001.jpg")  # PIL reads it by its content; 4 frames for 4 segments: the first
    (tmp_path / "frames.list").write_text("good 4 0\nbomb 4 1\n")
    cfg = load_config("tiny", ["data.format=frames", f"data.data_prefix={tmp_path}", "model.num_seg=4",
                               "data.short_side=24", "data.crop_size=16"])
    for train in (True, False):
        dataset = ClipDataset(cfg, str(tmp_path / "frames.list"), train=train)
        assert dataset[0][0] is not None
        clip, label, path, error = dataset[1]
        assert clip is None and label == 1 and path == str(tmp_path / "bomb")
        assert error.startswith("DecompressionBombError: Image size (196000000 pixels) exceeds limit"), error


def test_a_video_ffmpeg_runs_out_of_memory_on_is_skipped_in_training_and_extraction(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frames = np.zeros((8, 24, 32, 3), np.uint8)
    write_mp4(tmp_path / "clip.mp4", frames, 10.0)
    (tmp_path / "videos.list").write_text("clip.mp4 0\n")
    monkeypatch.setattr("training.data.read_frames", ffmpeg_out_of_memory)
    cfg = load_config("tiny", [f"data.data_prefix={tmp_path}"])
    clip, _, path, error = ClipDataset(cfg, str(tmp_path / "videos.list"), train=True)[0]
    assert clip is None and path == str(tmp_path / "clip.mp4") and error == "MemoryError: Cannot allocate memory"
    monkeypatch.setattr("training.frames.decoded_chunks", ffmpeg_out_of_memory)
    with pytest.raises(ValueError, match="none of the 1 videos"):  # reported and left out: none was left
        extract_frames(tmp_path / "videos.list", tmp_path / "frames", data_prefix=str(tmp_path), workers=1)


def test_an_exception_no_decoder_raises_is_skipped_but_traced_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Skipping every exception would hide a bug of ours as 'unreadable clips': its traceback shows, once."""
    write_mp4(tmp_path / "clip.mp4", np.zeros((8, 24, 32, 3), np.uint8), 10.0)
    (tmp_path / "videos.list").write_text("clip.mp4 0\nclip.mp4 1\n")

    def buggy(*_: object) -> None:
        raise IndexError("list index out of range")

    monkeypatch.setattr("training.data.read_frames", buggy)
    dataset = ClipDataset(load_config("tiny", [f"data.data_prefix={tmp_path}"]), str(tmp_path / "videos.list"), True)
    assert [dataset[i][3] for i in (0, 1)] == ["IndexError: list index out of range"] * 2
    traced = [r for r in caplog.records if "which no decoder is known to raise" in r.getMessage()]
    assert len(traced) == 1 and traced[0].exc_info is not None and "a bug?" in traced[0].getMessage()


def test_the_presence_probe_reaches_the_end_of_a_short_list(tmp_path: Path) -> None:
    from training.data import require_some_present

    write_mp4(tmp_path / "last.mp4", np.zeros((8, 24, 32, 3), np.uint8), 10.0)
    (tmp_path / "videos.list").write_text("a.mp4 0\nb.mp4 0\nc.mp4 0\nd.mp4 0\nlast.mp4 0\n")
    cfg = load_config("tiny", [f"data.data_prefix={tmp_path}"])
    require_some_present(ClipDataset(cfg, str(tmp_path / "videos.list"), True), "videos.list", cfg)  # no raise
    (tmp_path / "videos.list").write_text("a.mp4 0\nb.mp4 0\n")
    with pytest.raises(ValueError, match=r"none of 2 clips of videos\.list spread through it exists"):
        require_some_present(ClipDataset(cfg, str(tmp_path / "videos.list"), True), "videos.list", cfg)
