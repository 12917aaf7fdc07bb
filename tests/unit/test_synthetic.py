"""The synthetic motion dataset: real decodable MP4s, list files, determinism, and motion measured from pixels."""

import math
from pathlib import Path

import av
import decord
import numpy as np
import pytest
from av.video.frame import PictureType
from PIL import Image

from training.synthetic import CLASSES, SyntheticSpec, generate_dataset, render_clip, write_mp4

TINY = SyntheticSpec(min_width=64, max_width=64, min_height=48, max_height=48, min_frames=16, max_frames=16)
# Flat background, flat object, nothing else: the object is exactly the pixels that differ from the background.
MEASURE = SyntheticSpec(
    min_width=128, max_width=128, min_height=96, max_height=96, min_frames=24, max_frames=24, plain=True
)


def _background(frames: np.ndarray) -> np.ndarray:
    """The flat background colour int [3]: the most common colour among every frame's four corners."""
    corners = frames[:, [0, 0, -1, -1], [0, -1, 0, -1]].reshape(-1, 3)
    colours, counts = np.unique(corners, axis=0, return_counts=True)
    return colours[np.argmax(counts)].astype(int)


def _masks(frames: np.ndarray) -> np.ndarray:
    """Object masks bool [T, H, W] of a plain clip."""
    return np.abs(frames.astype(int) - _background(frames)).max(-1) > 40


def _centroids(masks: np.ndarray) -> np.ndarray:
    """Object centroids float [T, 2] (x, y) in pixels."""
    return np.array([[xs.mean(), ys.mean()] for ys, xs in (np.nonzero(m) for m in masks)])


def _rotation(frames: np.ndarray, t: int, k: int) -> int:
    """Degrees (counter-clockwise on screen, PIL's convention) that best turn frame t into frame t + k."""
    bg = tuple(int(v) for v in _background(frames))
    cx, cy = _centroids(_masks(frames[t : t + 1]))[0]
    src, dst = Image.fromarray(frames[t]), frames[t + k].astype(int)
    errors = {
        a: np.abs(np.asarray(src.rotate(a, Image.Resampling.BILINEAR, center=(cx, cy), fillcolor=bg)) - dst).mean()
        for a in range(-45, 46)
    }
    return min(errors, key=errors.__getitem__)


def _classify(frames: np.ndarray) -> str:
    """Name the motion of a plain clip from its pixels alone, independently of how it was rendered."""
    masks = _masks(frames)
    area = masks.sum((1, 2))
    zoom = math.log(area[-1] / area[0])
    if abs(zoom) > 0.2:
        return "zooming_in" if zoom > 0 else "zooming_out"
    dx, dy = _centroids(masks[[0, -1]])[1] - _centroids(masks[[0, -1]])[0]
    if max(abs(dx), abs(dy)) > 2:
        if abs(dx) > abs(dy):
            return "moving_right" if dx > 0 else "moving_left"
        return "moving_down" if dy > 0 else "moving_up"
    turned = sum(_rotation(frames, t, 4) for t in (0, 10, 19))
    return "rotating_counterclockwise" if turned > 0 else "rotating_clockwise"


def _decode_pyav(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.mark.parametrize("label", range(len(CLASSES)))
def test_motion_measured_from_pixels_matches_the_class(label: int) -> None:
    for seed in range(3):
        frames, _ = render_clip(label, np.random.default_rng([seed, label]), MEASURE)
        assert _classify(frames) == CLASSES[label], f"seed {seed}"


def test_translation_rotation_and_zoom_rates_are_in_range() -> None:
    short, steps = 96, MEASURE.min_frames - 1
    frames, _ = render_clip(CLASSES.index("moving_right"), np.random.default_rng(1), MEASURE)
    dx = np.diff(_centroids(_masks(frames))[:, 0])
    assert np.all(dx > MEASURE.min_speed * short * 0.5) and np.all(dx < MEASURE.max_speed * short * 1.5)
    frames, _ = render_clip(CLASSES.index("zooming_in"), np.random.default_rng(1), MEASURE)
    growth = (_masks(frames).sum((1, 2))[-1] / _masks(frames).sum((1, 2))[0]) ** (1 / (2 * steps)) - 1
    assert MEASURE.min_zoom * 0.7 < growth < MEASURE.max_zoom * 1.3
    # A 3.4x zoom crosses the sprite's mip levels: the area must still change smoothly, at the set rate.
    more = {"min_frames": 49, "max_frames": 49, "min_zoom": 0.025, "min_size": 0.4, "max_zoom_factor": 10.0}
    spec = SyntheticSpec(**{**MEASURE.__dict__, **more})
    frames, _ = render_clip(CLASSES.index("zooming_out"), np.random.default_rng(2), spec)
    step = np.diff(np.log(_masks(frames).sum((1, 2)))[::4])  # 4 frames a step: pixel quantisation averages out
    expected = 4 * 2 * math.log(1 - 0.025)  # the diameter shrinks 2.5 % a frame; area goes as its square
    assert np.all(np.abs(step - expected) < 0.3 * abs(expected)), step
    frames, _ = render_clip(CLASSES.index("rotating_clockwise"), np.random.default_rng(1), MEASURE)
    per_frame = -_rotation(frames, 5, 4) / 4
    assert MEASURE.min_rotation - 1 <= per_frame <= MEASURE.max_rotation + 1


def test_a_single_frame_does_not_reveal_the_class() -> None:
    """Per class, the mean object position and log area of 60 clips stay near the mean over all classes."""
    spec = SyntheticSpec(**{**TINY.__dict__, "plain": True})
    means = []
    for label in range(len(CLASSES)):
        rows = []
        for seed in range(60):
            masks = _masks(render_clip(label, np.random.default_rng([seed, label, 9]), spec)[0])
            per_frame = np.column_stack([_centroids(masks) / 48, np.log(masks.sum((1, 2)))])  # x, y in short sides
            rows.append(np.concatenate([per_frame.mean(0), per_frame[0]]))
        means.append(np.mean(rows, axis=0))
    spread = np.abs(np.array(means) - np.mean(means, axis=0))
    # Over a whole clip nothing is biased: trajectories are centred on the middle frame. Sampling noise of the means
    # is about 0.02 (positions) and 0.1 (log area).
    assert np.all(spread[:, :2] < 0.07) and np.all(spread[:, 2] < 0.3), spread
    # The first frame is offset by half the travel (<= 0.11 here, 0.06 on average) or half the zoom (log area 0.26).
    assert np.all(spread[:, 3:5] < 0.13) and np.all(spread[:, 5] < 0.55), spread


def test_render_is_deterministic_and_respects_the_spec() -> None:
    spec = SyntheticSpec(max_width=220, max_height=170, max_frames=44)
    for seed in range(16):
        frames, fps = render_clip(seed % len(CLASSES), np.random.default_rng(seed), spec)
        again, fps_again = render_clip(seed % len(CLASSES), np.random.default_rng(seed), spec)
        np.testing.assert_array_equal(frames, again)
        assert fps == fps_again and spec.min_fps <= fps <= spec.max_fps and fps == int(fps)
        t, h, w, c = frames.shape
        assert frames.dtype == np.uint8 and c == 3 and h % 2 == 0 and w % 2 == 0
        assert spec.min_width <= w <= spec.max_width and spec.min_height <= h <= spec.max_height
        assert spec.min_frames <= t <= spec.max_frames
    other, _ = render_clip(seed % len(CLASSES), np.random.default_rng(seed + 1), spec)
    assert other.shape != frames.shape or not np.array_equal(other, frames)


def test_spec_and_label_are_validated() -> None:
    with pytest.raises(ValueError, match="min_width"):
        SyntheticSpec(min_width=200, max_width=100)
    with pytest.raises(ValueError, match="label"):
        render_clip(len(CLASSES), np.random.default_rng(0), TINY)


def test_write_mp4_decodes_with_decord_and_pyav(tmp_path: Path) -> None:
    frames, fps = render_clip(2, np.random.default_rng(5), TINY)
    path = tmp_path / "clip.mp4"
    write_mp4(path, frames, fps)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    vr = decord.VideoReader(str(path))
    assert len(vr) == len(frames) and vr[0].shape == (48, 64, 3)
    assert vr.get_avg_fps() == pytest.approx(fps)
    decoded = _decode_pyav(path)
    assert decoded.shape == frames.shape
    # Close to the source: the loss is mostly the sensor noise, which no codec keeps, and chroma at object edges.
    assert np.abs(decoded.astype(int) - frames).mean() < 6
    np.testing.assert_array_equal(vr.get_batch(list(range(len(vr)))).asnumpy(), decoded)
    with av.open(str(path)) as container:  # B-frames, as in most real streams: sparse decoding gets frames to skip
        assert PictureType.B in {frame.pict_type for frame in container.decode(video=0)}
    for _ in range(3):  # reproducible bytes (x264's macroblock tree made them vary)
        write_mp4(tmp_path / "again.mp4", frames, fps)
        assert (tmp_path / "again.mp4").read_bytes() == path.read_bytes()


def test_write_mp4_rejects_odd_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        write_mp4(tmp_path / "x.mp4", np.zeros((2, 47, 64, 3), np.uint8), 25.0)


def test_generate_dataset_lists_balance_reuse_and_worker_independence(tmp_path: Path) -> None:
    train, val = generate_dataset(tmp_path / "a", 16, 8, seed=3, spec=TINY, workers=1)
    lines = train.read_text().splitlines()
    assert train == tmp_path / "a" / "train.list" and val == tmp_path / "a" / "val.list"
    assert lines[0] == "videos/moving_left/train_00000.mp4 0"
    assert lines[9] == "videos/moving_right/train_00009.mp4 1"
    assert np.bincount([int(x.split()[1]) for x in lines]).tolist() == [2] * len(CLASSES)
    assert len(val.read_text().splitlines()) == 8
    assert (tmp_path / "a" / "labels.txt").read_text().splitlines() == list(CLASSES)
    for line in lines + val.read_text().splitlines():
        rel, label = line.split()
        assert rel.split("/")[1] == CLASSES[int(label)]
        assert len(decord.VideoReader(str(tmp_path / "a" / rel))) == TINY.min_frames

    stamp = (tmp_path / "a" / lines[0].split()[0]).stat().st_mtime_ns
    assert generate_dataset(tmp_path / "a", 16, 8, seed=3, spec=TINY, workers=1) == (train, val)
    assert (tmp_path / "a" / lines[0].split()[0]).stat().st_mtime_ns == stamp  # reused, not rewritten

    generate_dataset(tmp_path / "b", 16, 8, seed=3, spec=TINY, workers=2)
    for line in lines + val.read_text().splitlines():  # byte-identical: each clip has its own generator
        rel = line.split()[0]
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_generate_dataset_can_limit_the_classes_and_keeps_their_ids(tmp_path: Path) -> None:
    train, val = generate_dataset(tmp_path, 6, 3, seed=1, spec=TINY, workers=1, classes=[1, 3])
    labels = [int(line.split()[1]) for line in train.read_text().splitlines() + val.read_text().splitlines()]
    assert labels == [1, 3, 1, 3, 1, 3, 1, 3, 1]
    assert (tmp_path / "labels.txt").read_text().splitlines() == list(CLASSES)  # the full label space
    assert (tmp_path / "videos" / "moving_right" / "train_00000.mp4").is_file()
    with pytest.raises(ValueError, match="label ids"):
        generate_dataset(tmp_path / "x", 2, 1, spec=TINY, workers=1, classes=[8])
