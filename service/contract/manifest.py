"""The one model-repository manifest schema, written by training and read by the service.

A published version lives in ``model_repo/<name>/<version>/`` and holds the inference
model (``model.json`` or ``model.pdmodel`` plus ``model.pdiparams``), ``labels.txt`` and
``manifest.json`` validated by :class:`Manifest`.
"""

from __future__ import annotations

import os
import re
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MANIFEST_FILE = "manifest.json"
LABELS_FILE = "labels.txt"
MODEL_PREFIX = "model"
ONNX_FILE = "model.onnx"
SCHEMA_VERSION = 1
"""The newest manifest schema this code reads and the one it writes. Every version from 1 up reads as is: the
schema has had no change that needs a migration yet."""
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)

SamplingRule = Literal["paddlevideo_test", "paddlevideo_predict"]
"""``paddlevideo_test``: PaddleVideo's valid/test Sampler (select_left=True), centre of each
segment, all zeros when frames <= num_seg. ``paddlevideo_predict``: ``tools/predict.py``'s
helper (select_left=False), ``(d-1)//2 + i*d`` or ``i % L`` for short clips."""


def schema_version_problem(version: int) -> str | None:
    """Why this code cannot read a manifest of schema ``version``, as one sentence, or None when it can."""
    if version < 1:
        return f"manifest schema_version {version} is not a schema version (they start at 1)"
    if version > SCHEMA_VERSION:
        return (f"manifest schema_version {version} is newer than this code reads ({SCHEMA_VERSION}): upgrade the "
                "service (or the training code) that reads it")
    return None


def is_valid_name(name: str) -> bool:
    """True when ``name`` is safe as a model folder name (no separators, no dot-dot)."""
    return bool(_NAME_RE.fullmatch(name)) and ".." not in name


class Preprocessing(BaseModel):
    """Test-time sampling and preprocessing, everything needed to rebuild the input tensor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_seg: int = Field(8, ge=1, le=64)
    sampling: SamplingRule = "paddlevideo_test"
    short_side: int = Field(256, ge=8, le=4096)
    fixed_ratio: bool = False
    """True: resize to short_side x int(short_side*4/3) whatever the aspect (predict.py)."""
    crop_size: int = Field(224, ge=8, le=4096)
    spatial_crops: Literal[1, 3] = 1
    """1: PaddleVideo's centre crop. 3: crops at the start, centre and end of the long side (centred on the short
    one), so an action off the centre of a wide or tall frame is still seen; the network averages their logits."""
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @property
    def frames_per_clip(self) -> int:
        """The input's second axis: ``num_seg`` frames for each crop, crop after crop."""
        return self.num_seg * self.spatial_crops

    @property
    def input_shape(self) -> tuple[int, int, int, int, int]:
        """The model input this preprocessing makes, ``-1`` the batch axis."""
        return (-1, self.frames_per_clip, 3, self.crop_size, self.crop_size)

    @model_validator(mode="after")
    def _crop_fits(self) -> Preprocessing:
        if self.crop_size > self.short_side:
            raise ValueError(f"crop_size {self.crop_size} exceeds short_side {self.short_side}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std entries must be positive")
        return self


class ModelIO(BaseModel):
    """Names and layout of the inference model's input and output tensors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_name: str = "data_batch_0"
    output_name: str = "fetch_name_0"
    input_layout: Literal["NTCHW"] = "NTCHW"
    input_shape: tuple[int, int, int, int, int] = (-1, 8, 3, 224, 224)
    """-1 is the dynamic batch axis."""


class Manifest(BaseModel):
    """Everything the service needs to load, check and feed one published model version."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    schema_version: int = SCHEMA_VERSION
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    labels: list[str] = Field(min_length=1)
    preprocessing: Preprocessing
    io: ModelIO = ModelIO()
    model_file: str = "model.json"
    params_file: str = "model.pdiparams"
    onnx_file: str | None = None
    """The same network as ONNX (paddle2onnx), for the ONNX Runtime backend; None when not exported."""
    backbone: str = "ResNetTSM-50"
    depth: int = 50
    base_width: int = 64
    shift: bool = True
    data_format: Literal["NCHW", "NHWC"] = "NCHW"
    metrics: dict[str, float] = Field(default_factory=dict)
    dataset: str = ""
    config: dict[str, object] = Field(default_factory=dict)
    source: str = ""
    source_sha256: str = ""
    paddle_version: str = ""
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, version: int) -> int:
        # Without this a newer exporter's manifest would be served by rules it was not written for.
        if (problem := schema_version_problem(version)) is not None:
            raise ValueError(problem)
        return version

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.io.input_shape[1] != self.preprocessing.frames_per_clip:
            raise ValueError("io.input_shape[1] must equal preprocessing.num_seg * preprocessing.spatial_crops")
        crop = self.preprocessing.crop_size
        if tuple(self.io.input_shape[2:]) != (3, crop, crop):
            raise ValueError("io.input_shape must be [N, num_seg * spatial_crops, 3, crop_size, crop_size]")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def write(self, folder: Path) -> None:
        """Write ``manifest.json`` and ``labels.txt`` (one name per line) into ``folder``."""
        (folder / MANIFEST_FILE).write_text(self.model_dump_json(indent=2) + "\n")
        (folder / LABELS_FILE).write_text("".join(f"{label}\n" for label in self.labels))

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """Read and validate ``folder/manifest.json``; raises ValueError/OSError if unusable.

        A schema_version this code cannot read is raised alone, as a plain ValueError of one sentence: the other
        errors of a newer manifest (fields added since) follow from it, and the repository shows the message as
        the failed version's error and in one log line, where pydantic's several-line report reads badly."""
        try:
            return cls.model_validate_json((folder / MANIFEST_FILE).read_text())
        except ValidationError as exc:
            if (problem := _schema_problem_in(exc)) is not None:
                raise ValueError(problem) from exc
            raise


def _schema_problem_in(exc: ValidationError) -> str | None:
    """The sentence of :meth:`Manifest._known_schema` when it is among ``exc``'s errors (not a wrong type there)."""
    for error in exc.errors(include_url=False):
        if error["loc"] == ("schema_version",) and error["type"] == "value_error":
            return str(error["ctx"]["error"])
    return None


def is_number(text: str) -> bool:
    """Digits 0-9 only: ``str.isdigit`` also takes "²" and "①", which ``int()`` refuses (a folder so named stopped
    every scan of the repository, and so the server's start)."""
    return text.isascii() and text.isdigit()


def list_versions(model_dir: Path) -> list[int]:
    """Published versions of one model: positive-integer folder names without leading zeros (``07`` beside ``7``
    would be one version twice), ascending (hidden staging folders skipped)."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir()
                  if p.is_dir() and is_number(p.name) and p.name[0] != "0")


def repository_problem(root: Path) -> str | None:
    """Why ``root`` can hold no models, as a clause ("does not exist"), or None when it is a readable folder (an
    empty one included). The clause leaves the path out: clients see it, the server's log adds the path."""
    try:
        mode = root.stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not stat.S_ISDIR(mode):
        return "is not a folder"
    if not os.access(root, os.R_OK | os.X_OK):
        return "cannot be read (permission denied)"
    return None


def scan_repository(root: Path) -> dict[str, list[int]]:
    """``{model name: [versions ascending]}`` for every valid, non-hidden model folder of ``root`` (none when
    :func:`repository_problem` has something to say)."""
    found: dict[str, list[int]] = {}
    if repository_problem(root) is not None:
        return found
    for model_dir in sorted(root.iterdir()):
        if not model_dir.is_dir() or model_dir.name.startswith(".") or not is_valid_name(model_dir.name):
            continue
        if versions := list_versions(model_dir):
            found[model_dir.name] = versions
    return found


def read_label_list(path: Path) -> list[str]:
    """Read a label list: PaddleVideo's ``<id> <name>`` lines or plain one-name-per-line.

    Ids, when present, must run 0, 1, 2... or, as in UCF-101's ``classInd.txt``, 1, 2, 3... in order (the
    first id sets which): either way the first name is class 0. A wrong id names the line.
    """
    labels: list[str] = []
    first_id = 0  # 1 once the first label's id is 1
    for lineno, raw in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):  # a BOM is no label
        line = raw.strip()
        if not line:
            continue
        head, _, rest = line.partition(" ")
        if rest and is_number(head):
            if not labels and int(head) == 1:
                first_id = 1
            if int(head) != first_id + len(labels):
                expected = "0 or 1" if not labels else str(first_id + len(labels))
                raise ValueError(f"{path}:{lineno}: expected id {expected}, got {head}")
            line = rest.strip()
        labels.append(line)
    if not labels:
        raise ValueError(f"{path}: no labels")
    return labels
