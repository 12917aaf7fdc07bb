"""Checkpoints: PaddleVideo-compatible ``.pdparams`` state dicts plus a JSON sidecar (config, epoch, metrics)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import paddle

from training.config import Config
from training.tsm import Recognizer2D, build_tsm

log = logging.getLogger(__name__)


def build_model(cfg: Config) -> Recognizer2D:
    """The network a config describes (fresh weights)."""
    m = cfg.model
    return build_tsm(m.depth, m.num_classes, m.num_seg, m.shift, m.data_format, m.base_width, m.drop_ratio)


def save_checkpoint(prefix: Path, model: paddle.nn.Layer, cfg: Config, epoch: int,
                    metrics: dict[str, float], optimizer: paddle.optimizer.Optimizer | None = None) -> Path:
    """Write ``<prefix>.pdparams`` (+ ``.pdopt``) and ``<prefix>.json``; returns the params path."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    layer = model._layers if isinstance(model, paddle.DataParallel) else model
    paddle.save(layer.state_dict(), str(prefix) + ".pdparams")
    if optimizer is not None:
        paddle.save(optimizer.state_dict(), str(prefix) + ".pdopt")
    meta = {"epoch": epoch, "metrics": metrics, "config": cfg.model_dump(mode="json")}
    Path(str(prefix) + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    return Path(str(prefix) + ".pdparams")


def read_meta(params: Path) -> dict[str, Any]:
    """The JSON sidecar of a checkpoint, or {} for a foreign (e.g. PaddleVideo) checkpoint."""
    sidecar = params.with_suffix(".json")
    return json.loads(sidecar.read_text()) if sidecar.exists() else {}


def load_weights(model: paddle.nn.Layer, params: Path, backbone_only: bool = False) -> tuple[int, list[str]]:
    """Load a state dict; returns (tensors loaded, keys of the model left untouched).

    ``backbone_only`` follows PaddleVideo's ``load_ckpt`` for pretrained weights: for each
    backbone key K take ``file[K]`` else ``file['backbone.'+K]`` (ImageNet files have no prefix),
    skipping what is missing or has another shape.
    """
    state = paddle.load(str(params))
    own = model.state_dict()
    chosen: dict[str, Any] = {}
    for key, tensor in own.items():
        if backbone_only:
            if not key.startswith("backbone."):
                continue
            bare = key[len("backbone."):]
            value = state.get(bare, state.get(key))
        else:
            value = state.get(key)
        if value is not None and list(value.shape) == list(tensor.shape):
            chosen[key] = value
    missing = [k for k in own if k not in chosen and (not backbone_only or k.startswith("backbone."))]
    if not chosen:
        raise ValueError(f"{params}: no tensor matches the model (is it a TSM/ResNet checkpoint of this depth?)")
    model.set_state_dict(chosen)
    if missing:
        log.warning("%s: %d model tensors not in the file, left as initialised (e.g. %s)",
                    params, len(missing), missing[0])
    return len(chosen), missing
