"""Datasets and loaders: list file -> decoded, sampled, transformed clips in worker processes.

A clip that can't be decoded is never replaced by another sample: the collate function
drops it and the batch carries its path and error in ``skipped`` for the loop to report.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import paddle
from PIL import Image

from service.contract.manifest import Preprocessing
from service.contract.preprocess import normalize, preprocess_clip
from service.contract.sampling import test_indices, train_indices
from service.decode_errors import DecodeError, reason_only
from service.decoding import read_frames
from training.config import DEFAULT_FRAME_PATTERN, Config
from training.listfile import Sample, parse_list
from training.transforms import flip_with_label, multi_scale_crop, reverse_with_label

log = logging.getLogger(__name__)
Item = tuple[np.ndarray | None, int, str, str]  # (clip float32 [T,3,H,W] or None, label, path, error)


def read_frame_dir(sample: Sample, indices: list[int], pattern: str = DEFAULT_FRAME_PATTERN) -> np.ndarray:
    """uint8 [T, H, W, 3] RGB from ``<dir>/<pattern formatted with idx + 1>`` (1-based file numbers)."""
    frames = []
    for idx in indices:
        file = sample.path / pattern.format(idx + 1)
        try:
            with Image.open(file) as img:
                frames.append(np.asarray(img.convert("RGB")))
        except OSError as exc:
            raise DecodeError(f"frame {file.name} could not be read ({exc.strerror or exc})", "missing_frame") from exc
        if frames[-1].shape != frames[0].shape:  # else np.stack's "all input arrays must have the same shape"
            (h, w), (h0, w0) = frames[-1].shape[:2], frames[0].shape[:2]
            raise DecodeError(f"frame {file.name} is {w}x{h}, frame {pattern.format(indices[0] + 1)} {w0}x{h0}: "
                              "the frames of a folder must have one size", "frame_size")
    return np.stack(frames)


class ClipDataset(paddle.io.Dataset):
    """Samples of one list file, as training clips (random) or test clips (deterministic)."""

    def __init__(self, cfg: Config, list_file: str, train: bool, spec: Preprocessing | None = None) -> None:
        """``spec``: the test clips' sampling and preprocessing, by default the config's (a published model's
        manifest gives its own, ``fixed_ratio`` included)."""
        super().__init__()
        self.cfg, self.train = cfg, train
        self.spec = spec or cfg.preprocessing()
        d = cfg.data
        suffix = d.suffix if d.format == "videos" else ""  # for frames it names the files in each folder
        self.samples = parse_list(Path(list_file), d.format, d.data_prefix, suffix, cfg.model.num_classes)
        self.epoch = 0  # set by the loop each epoch; workers are re-created per epoch and see it

    def __len__(self) -> int:
        return len(self.samples)

    def _frames(self, sample: Sample, index: int) -> np.ndarray:
        num_seg = self.cfg.model.num_seg
        if self.train:
            rng = np.random.default_rng([self.cfg.train.seed, self.epoch, index, 0])
            pick = lambda count: train_indices(count, num_seg, rng)  # noqa: E731
        else:
            pick = lambda count: test_indices(count, self.spec.num_seg, self.spec.sampling)  # noqa: E731
        if self.cfg.data.format == "frames":
            if sample.num_frames < 1:
                raise DecodeError("the list says it has no frames", "no_frames")
            return read_frame_dir(sample, list(pick(sample.num_frames)), self.cfg.data.frame_pattern)
        return read_frames(sample.path, pick)[0]

    def _train_transform(self, frames: np.ndarray, label: int, index: int) -> tuple[np.ndarray, int]:
        """MultiScaleCrop, flip, optional time reversal -> (float32 [T, 3, crop, crop], label after the maps)."""
        d = self.cfg.data
        rng = np.random.default_rng([self.cfg.train.seed, self.epoch, index, 1])
        images = [Image.fromarray(f) for f in frames]
        images = multi_scale_crop(images, d.crop_size, rng, d.scales)
        images, label = flip_with_label(images, label, rng, d.flip_prob, d.flip_labels)
        clip, label = reverse_with_label(np.stack([np.asarray(i) for i in images]), label, rng, d.reverse_prob,
                                         d.reverse_labels)
        return normalize(clip, d.mean, d.std), label

    def __getitem__(self, index: int) -> Item:
        sample = self.samples[index]
        label = sample.label
        try:
            frames = self._frames(sample, index)
            if self.train:
                clip, label = self._train_transform(frames, label, index)
            else:
                clip = preprocess_clip(frames, self.spec)
        except Exception as exc:  # whatever one clip raises is that clip's: PyAV's MemoryError for a corrupt file,
            # PIL's DecompressionBombError. Out of __getitem__ it would stop Paddle's loader (a hang without workers).
            _note_unexpected(exc)
            return None, label, str(sample.path), reason_only(exc, sample.path)  # the report names the path
        return clip, label, str(sample.path), ""


_EXPECTED = (DecodeError, OSError, ValueError, MemoryError, Image.DecompressionBombError)
_traced: set[type[BaseException]] = set()


def _note_unexpected(exc: Exception) -> None:
    """An exception no decoder is known to raise may be a bug of ours: its traceback, once per type and process."""
    if not isinstance(exc, _EXPECTED) and type(exc) not in _traced:
        _traced.add(type(exc))
        log.warning("a clip failed with %s, which no decoder is known to raise (skipped like any unreadable clip; "
                    "a bug?)", type(exc).__name__, exc_info=exc)


def collate_clips(items: list[Item]) -> dict[str, Any]:
    """Stack good clips -> ``clips`` float32 [N, T, 3, H, W], ``labels`` int64 [N, 1]; list failures."""
    good = [it for it in items if it[0] is not None]
    skipped = [f"{path}: {err}" for _, _, path, err in items if err]
    if not good:
        return {"clips": np.zeros((0,), np.float32), "labels": np.zeros((0, 1), np.int64), "skipped": skipped}
    clips = np.stack([it[0] for it in good]).astype(np.float32)  # type: ignore[misc]
    labels = np.array([[it[1]] for it in good], dtype=np.int64)
    return {"clips": clips, "labels": labels, "skipped": skipped}


def unread_list_hint(cfg: Config) -> str:
    """What to check when no clip of a list could be read: most often its paths are joined to the wrong prefix."""
    return (f"check data.data_prefix ({cfg.data.data_prefix or 'empty'}) and data.format ({cfg.data.format}: "
            "'videos' lists 'path label', 'frames' lists 'folder num_frames label')")


def require_some_present(dataset: ClipDataset, list_file: str, cfg: Config, probes: int = 8) -> None:
    """Before the first epoch: when not one of ``probes`` clips spread through the list exists, the paths are read
    from the wrong place, which would otherwise show only after a whole epoch (hours, on Kinetics). Only presence
    is checked: a list of corrupt files is still the epoch's to report clip by clip."""
    count = len(dataset.samples)
    tries = min(probes, count)
    picks = sorted({round(i * (count - 1) / max(1, tries - 1)) for i in range(tries)})
    if any(dataset.samples[i].path.exists() for i in picks):
        return
    raise ValueError(f"none of {len(picks)} clips of {list_file} spread through it exists (e.g. "
                     f"{dataset.samples[picks[0]].path}): {unread_list_hint(cfg)}")


def make_loader(dataset: paddle.io.Dataset, batch_size: int, num_workers: int, shuffle: bool,
                distributed: bool = False) -> paddle.io.DataLoader:
    """A DataLoader with worker processes; a DistributedBatchSampler when running data-parallel.

    Training (``shuffle``) drops a last partial batch, as PaddleVideo's loaders do (BatchNorm statistics of a
    clip or two are noise), unless the set is smaller than one batch on every process.
    """
    ranks = paddle.distributed.get_world_size() if distributed else 1
    drop_last = shuffle and len(dataset) >= batch_size * ranks  # type: ignore[arg-type]
    if distributed:
        sampler = paddle.io.DistributedBatchSampler(dataset, batch_size, shuffle=shuffle, drop_last=drop_last)
    else:
        sampler = paddle.io.BatchSampler(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last)
    return paddle.io.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                collate_fn=collate_clips, use_shared_memory=False)
