"""Typed training config: defaults, then a YAML file, then ``key.path=value`` overrides.

The resolved config is stored in every checkpoint and in the exported manifest, so a load
rebuilds exactly the network that was trained.
"""

from __future__ import annotations

from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.contract.manifest import Preprocessing, SamplingRule

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "configs"
DEFAULT_FRAME_PATTERN = "img_{:05}.jpg"  # PaddleVideo's frame files: img_00001.jpg, ...


def shipped_path(path: str) -> str:
    """``path`` as given where it exists (relative: to the working directory), else the file the package ships
    under that name relative to the folder holding ``training/`` (``training/labels/kinetics400_label_list.txt``
    from any working directory, as ``-c tsm_k400_frames`` finds its YAML in ``CONFIG_DIR``). Only files inside
    the package count, so a user's own relative path never resolves into this checkout's ``runs/``; a path
    found neither way is left as given, for its reader to name."""
    if not path or Path(path).is_absolute() or Path(path).exists():
        return path
    shipped = PACKAGE_DIR.parent / path
    return str(shipped) if shipped.is_file() and PACKAGE_DIR in shipped.resolve().parents else path


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    depth: Literal[18, 34, 50, 101, 152] = 50
    num_classes: int = Field(400, ge=1)
    num_seg: int = Field(8, ge=1, le=64)  # Preprocessing's bounds: validation and export build one from it
    shift: bool = True
    data_format: Literal["NCHW", "NHWC"] = "NCHW"
    base_width: int = Field(64, ge=4)
    drop_ratio: float = Field(0.5, ge=0.0, lt=1.0)
    pretrained: str = ""
    """ImageNet ResNet50_pretrain.pdparams or PaddleVideo TSM_k400.pdparams: backbone keys only."""


class DataConfig(_Strict):
    format: Literal["videos", "frames"] = "videos"
    train_list: str = ""
    valid_list: str = ""
    data_prefix: str = ""
    suffix: str = ""
    """As PaddleVideo: videos, appended to each list path (UCF-101's ``.avi``); frames, the frame files' name,
    formatted with the 1-based frame number (empty: PaddleVideo's ``img_{:05}.jpg``)."""
    labels: str = ""
    """Label list file (``<id> <name>`` or one name per line); empty: class_<i>."""
    batch_size: int = Field(16, ge=1)
    test_batch_size: int = Field(8, ge=1)
    num_workers: int = Field(4, ge=0)
    # Preprocessing's bounds: a config outside them could train, but every validation clip and the export fail.
    short_side: int = Field(256, ge=8, le=4096)
    crop_size: int = Field(224, ge=8, le=4096)
    spatial_crops: Literal[1, 3] = 1
    """Test-time crops: 1, PaddleVideo's centre crop; 3, along the long side (``Preprocessing.spatial_crops``)."""
    sampling: SamplingRule = "paddlevideo_test"
    scales: list[float] = Field(default_factory=lambda: [1.0, 0.875, 0.75, 0.66])
    flip_prob: float = Field(0.5, ge=0.0, le=1.0)
    flip_labels: list[int] = Field(default_factory=list)
    """Label of a class once mirrored (moving_left -> moving_right); empty: flips keep labels (PaddleVideo)."""
    reverse_prob: float = Field(0.0, ge=0.0, le=1.0)
    """Play the clip backwards with this probability (needs ``reverse_labels``): for motion classes the
    reversed clip is a free sample of the opposite class that looks identical frame by frame."""
    reverse_labels: list[int] = Field(default_factory=list)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @field_validator("labels")
    @classmethod
    def _shipped_labels(cls, labels: str) -> str:
        return shipped_path(labels)

    @property
    def frame_pattern(self) -> str:
        return self.suffix or DEFAULT_FRAME_PATTERN

    @model_validator(mode="after")
    def _frame_pattern_formats(self) -> DataConfig:
        if self.format == "frames":
            try:
                named = self.frame_pattern.format(1)
            except (IndexError, KeyError, ValueError) as exc:
                raise ValueError(f"data.suffix {self.suffix!r} is, for frame folders, the frame files' name with "
                                 f"{{}} for the 1-based frame number, e.g. {DEFAULT_FRAME_PATTERN!r} ({exc})") from exc
            if named == self.frame_pattern:
                raise ValueError(f"data.suffix {self.suffix!r} has no {{}} for the frame number: for frame folders "
                                 f"it is the frame files' name, e.g. {DEFAULT_FRAME_PATTERN!r}")
        return self

    @model_validator(mode="after")
    def _crops_fit(self) -> DataConfig:
        """Refuse now what would otherwise fail on every clip, after a whole training epoch."""
        if self.crop_size > self.short_side:
            raise ValueError(f"data.crop_size {self.crop_size} is larger than data.short_side {self.short_side}: "
                             "a crop must fit in the frame resized to its short side")
        if not self.scales or not all(0 < s <= 1 for s in self.scales):
            raise ValueError(f"data.scales {self.scales} must be one or more fractions in (0, 1]: each is the "
                             "share of the short side a training crop takes, and a crop must fit in the frame")
        if not all(s > 0 for s in self.std):
            raise ValueError(f"data.std {list(self.std)} must be positive: pixels are divided by it")
        return self


class OptimizerConfig(_Strict):
    name: Literal["momentum", "adam"] = "momentum"
    """PaddleVideo's Momentum; ``adam`` for training from scratch, where Momentum stalls on the tiny fc init."""
    momentum: float = 0.9
    weight_decay: float = 1e-4
    clip_norm: float = 20.0
    boundaries: list[int] = Field(default_factory=lambda: [20, 40])
    """Epochs at which the learning rate steps down (PiecewiseDecay, stepped per epoch)."""
    values: list[float] = Field(default_factory=lambda: [0.02, 0.002, 0.0002])

    @model_validator(mode="after")
    def _piecewise(self) -> OptimizerConfig:
        if len(self.values) != len(self.boundaries) + 1:
            raise ValueError("optimizer.values needs exactly one more entry than optimizer.boundaries")
        return self


class TrainConfig(_Strict):
    epochs: int = Field(50, ge=1)
    save_interval: int = Field(10, ge=1)
    amp: bool = False
    amp_level: Literal["O1", "O2"] = "O1"
    seed: int = 0
    output_dir: str = "runs/default"
    max_steps_per_epoch: int = Field(0, ge=0)
    """0: the whole list each epoch; >0 caps steps (quick experiments and tests)."""
    stop_at_val_top1: float = Field(0.0, ge=0.0, le=1.0)
    """>0: end the run after the first epoch whose validation top-1 reaches this (0: run every epoch)."""


class Config(_Strict):
    """Defaults follow PaddleVideo's TSM recipe; see training/configs/ for the shipped variants."""

    name: str = "tsm"
    dataset: str = ""
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _label_maps(self) -> Config:
        for key in ("flip_labels", "reverse_labels"):
            mapping = getattr(self.data, key)
            if mapping and sorted(mapping) != list(range(self.model.num_classes)):
                raise ValueError(f"data.{key} must be a permutation of 0..{self.model.num_classes - 1}")
        if self.data.reverse_prob > 0 and not self.data.reverse_labels:
            raise ValueError("data.reverse_prob > 0 needs data.reverse_labels")
        return self

    def preprocessing(self) -> Preprocessing:
        """The test-time preprocessing this config trains and evaluates with."""
        d = self.data
        return Preprocessing(num_seg=self.model.num_seg, sampling=d.sampling, short_side=d.short_side,
                             crop_size=d.crop_size, spatial_crops=d.spatial_crops, mean=d.mean, std=d.std)


def _field_type(dotted: str) -> Any:
    """The annotation of the config field at ``a.b.c``; None for a key the model doesn't have (validation names it).

    Raises ``ValueError`` naming the key where the path goes on below a setting that is not a section.
    """
    model: type[BaseModel] = Config
    keys = dotted.split(".")
    for depth, key in enumerate(keys):
        field = model.model_fields.get(key)
        if field is None:
            return None
        if depth == len(keys) - 1:
            return field.annotation
        if not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            raise ValueError(f"override {dotted!r}: {'.'.join(keys[:depth + 1])} is a setting, not a section")
        model = field.annotation
    return None


def _is_text(annotation: Any) -> bool:
    """A ``str`` or ``str | None`` field, whose override value is its text as given."""
    return annotation is str or (get_origin(annotation) in (Union, UnionType)
                                 and set(get_args(annotation)) == {str, type(None)})


def _parse_value(dotted: str, raw: str) -> Any:
    """An override's value: YAML (``3``, ``[0.1, 0.01]``, ``true``), except that a text field takes the text as
    given, so ``name=123``, ``data.labels=on`` and ``model.pretrained=`` (empty: no weights) mean what they say.
    A quoted text (``model.pretrained=""``) is read as YAML, as before, and loses its quotes."""
    annotation = _field_type(dotted)
    if not _is_text(annotation):
        return yaml.safe_load(raw)
    if raw.lstrip().startswith(("'", '"')):
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            return raw  # not one quoted string after all ('a' b): the text it is
        return value if isinstance(value, str) else raw
    return raw


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for depth, key in enumerate(keys[:-1]):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted!r}: {'.'.join(keys[:depth + 1])} is not a section in the config "
                             f"file (it holds {node!r})")
    node[keys[-1]] = value


def config_file(path: str | Path) -> Path:
    """``path`` as given, else a name or file name in training/configs/ (``tiny``, ``tiny.yaml``)."""
    for file in (Path(path), CONFIG_DIR / path, CONFIG_DIR / f"{path}.yaml"):
        if file.is_file():
            return file
    if Path(path).exists():
        raise ValueError(f"config {path} is not a file")
    names = ", ".join(sorted(f.stem for f in CONFIG_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"no config file or name {str(path)!r}: give a YAML file or one of {names}")


def _read_tree(path: str | Path) -> dict[str, Any]:
    """The config file's mapping of sections (empty for an empty file)."""
    file = config_file(path)
    tree = yaml.safe_load(file.read_text()) or {}
    if not isinstance(tree, dict):
        raise ValueError(f"config {file} must be a mapping of keys and sections (name: ..., model: ...), "
                         f"not a {type(tree).__name__}")
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file (a name or file name in training/configs/, or a path) <- ``a.b=value`` overrides.

    Override values are parsed as YAML scalars/lists (``train.epochs=3``, ``optimizer.values=[0.1,0.01]``), except
    for text fields, which take the text as given (``model.pretrained=`` is empty: no pretrained weights).
    """
    tree = _read_tree(path) if path else {}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key.path=value")
        _set_path(tree, key, _parse_value(key, raw))
    return Config.model_validate(tree)
