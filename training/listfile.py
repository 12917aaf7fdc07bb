"""PaddleVideo list files: ``<path> <label>`` (videos) and ``<dir> <num_frames> <label>`` (frames)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ListFormat = Literal["videos", "frames"]


class ListFileError(ValueError):
    """A malformed line; the message names the file and line number."""


@dataclass(frozen=True)
class Sample:
    """One clip: a video file, or a folder of ``img_00001.jpg``... frames (1-based)."""

    path: Path
    label: int
    num_frames: int = 0  # frames format only


def _int_field(text: str, what: str, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ListFileError(f"{where}: {what} must be an integer, got {text!r}") from None
    if value < 0:
        raise ListFileError(f"{where}: {what} must be >= 0, got {value}")
    return value


def parse_list(list_file: Path, fmt: ListFormat, data_prefix: str = "", suffix: str = "",
               num_classes: int | None = None) -> list[Sample]:
    """Read a list file; ``data_prefix`` is joined in front of each path, ``suffix`` appended.

    Raises :class:`ListFileError` naming ``file:line`` for a malformed line or a label outside
    ``[0, num_classes)``.
    """
    fields = 2 if fmt == "videos" else 3
    samples: list[Sample] = []
    try:  # utf-8-sig: a BOM (Windows editors write one) would otherwise become part of the first path
        text = list_file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ListFileError(f"{list_file}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the list as "
                            "UTF-8") from exc
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{list_file}:{lineno}"
        parts = line.rsplit(maxsplit=fields - 1)  # paths may contain spaces; numbers may not
        if len(parts) != fields:
            shape = "<path> <label>" if fmt == "videos" else "<frame_dir> <num_frames> <label>"
            raise ListFileError(f"{where}: expected '{shape}', got {line!r}")
        label = _int_field(parts[-1], "label", where)
        if num_classes is not None and label >= num_classes:
            raise ListFileError(f"{where}: label {label} is outside 0..{num_classes - 1}")
        frames = _int_field(parts[1], "num_frames", where) if fmt == "frames" else 0
        path = Path(data_prefix) / (parts[0] + suffix) if data_prefix else Path(parts[0] + suffix)
        samples.append(Sample(path, label, frames))
    if not samples:
        raise ListFileError(f"{list_file}: the list has no samples")
    return samples
