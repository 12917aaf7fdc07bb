"""The tiny training set the training-job tests share: 12 real MP4s of a block moving left or right, and the
``tiny`` config's overrides pointing at it."""

import json
from pathlib import Path

import numpy as np

from training.config import Config, load_config
from training.synthetic import write_mp4

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def moving_block(label: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [16, 48, 64, 3]: a bright block moving right (label 0/2) or left (1/3) on a plain background."""
    frames = np.full((16, 48, 64, 3), 30 + 40 * (label // 2), np.uint8)
    y = int(rng.integers(4, 28))
    for t in range(16):
        x = 4 + 2 * t if label % 2 == 0 else 48 - 2 * t
        frames[t, y:y + 14, x:x + 10] = 230
    return frames


def make_tiny_set(root: Path) -> Path:
    """The 12 clips, ``train.list`` (all), ``val.list`` (6 and a missing file), ``bad.mp4`` and ``with_bad.list``."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(12):
        write_mp4(root / f"clip_{i}.mp4", moving_block(i % 4, rng), 15.0)
        lines.append(f"clip_{i}.mp4 {i % 4}")
    (root / "train.list").write_text("\n".join(lines) + "\n")
    (root / "val.list").write_text("\n".join(lines[:6]) + "\nnot_there.mp4 1\n")
    (root / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 50)
    (root / "with_bad.list").write_text("clip_0.mp4 0\nbad.mp4 1\nclip_1.mp4 1\n")
    return root


def overrides(root: Path, out: Path, *extra: str) -> list[str]:
    """The overrides of the ``tiny`` config for the set at ``root``, writing into ``out``."""
    return [f"data.train_list={root / 'train.list'}", f"data.valid_list={root / 'val.list'}",
            f"data.data_prefix={root}", f"train.output_dir={out}", *extra]


def tiny_config(root: Path, out: Path, *extra: str) -> Config:
    return load_config("tiny", overrides(root, out, *extra))


def records(path: Path) -> list[dict[str, float | str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def step_losses(out: Path) -> list[float]:
    return [float(r["loss"]) for r in records(out / "metrics.jsonl") if r["kind"] == "step"]


def train_argv(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "-c", "tiny", *(a for key in overrides(root, out, *extra) for a in ("-o", key))]


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started and has not reaped (Linux's /proc): a run's ranks or loader workers."""
    return [int(c) for f in Path(f"/proc/{pid}/task").glob("*/children") for c in f.read_text().split()]
