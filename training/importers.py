"""Import models made by PaddleVideo itself into ``model_repo``.

Two sources: a training checkpoint (``TSM_k400.pdparams``: a state dict with ``backbone.*``
and ``head.*`` keys) which we load into our identical network and export, or an inference
export (``TSM.pdmodel``/``TSM.json`` + ``TSM.pdiparams``) which we publish as it is.
"""

from __future__ import annotations

import logging
import re
import shutil
import uuid
from pathlib import Path

import paddle

from service.contract.manifest import Manifest, ModelIO, Preprocessing
from training.export import export_to_repo, onnx_available, probe_inference_model, publish, sha256_file
from training.tsm import build_tsm

log = logging.getLogger(__name__)

_STAGE4_BLOCKS = {6: 50, 23: 101, 36: 152}


def infer_architecture(state: dict[str, object]) -> tuple[int, int, int]:
    """(depth, num_classes, base_width) of a TSM state dict, from its key names and shapes."""
    if "head.fc.weight" not in state or "backbone.conv._conv.weight" not in state:
        raise ValueError("not a TSM checkpoint: backbone.conv._conv.weight or head.fc.weight is missing")
    base_width = int(state["backbone.conv._conv.weight"].shape[0])  # type: ignore[attr-defined]
    num_classes = int(state["head.fc.weight"].shape[1])  # type: ignore[attr-defined]
    stage4 = {m.group(1) for k in state if (m := re.match(r"backbone\.(res4[a-z0-9]+)\.conv0\.", k))}
    bottleneck = any(k.endswith(".conv2._conv.weight") for k in state)
    if bottleneck:
        if len(stage4) not in _STAGE4_BLOCKS:
            raise ValueError(f"unrecognised ResNet-TSM: {len(stage4)} blocks in stage 4")
        return _STAGE4_BLOCKS[len(stage4)], num_classes, base_width
    return (34 if len(stage4) == 6 else 18), num_classes, base_width


def _manifest(name: str, labels: list[str], spec: Preprocessing, source: Path, dataset: str,
              depth: int, base_width: int) -> Manifest:
    return Manifest(
        name=name, version=1, labels=labels, preprocessing=spec,
        io=ModelIO(input_shape=(-1, spec.num_seg, 3, spec.crop_size, spec.crop_size)),
        backbone=f"ResNetTSM-{depth}", depth=depth, base_width=base_width, dataset=dataset,
        source=source.name, source_sha256=sha256_file(source), config={"imported_from": "PaddleVideo"},
    )


def import_checkpoint(params: Path, labels: list[str], repo: Path, name: str, spec: Preprocessing,
                      dataset: str = "") -> Path:
    """Load a PaddleVideo TSM ``.pdparams`` into our network (every key must match) and export it."""
    state = paddle.load(str(params))
    depth, num_classes, base_width = infer_architecture(state)
    if num_classes != len(labels):
        raise ValueError(f"{params.name} has {num_classes} classes but the label list has {len(labels)}")
    model = build_tsm(depth, num_classes, spec.num_seg, base_width=base_width)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(k for k in set(state) - set(own) if not k.endswith("num_batches_tracked"))
    if missing or unexpected:
        raise ValueError(f"{params.name} does not match ResNetTSM-{depth}: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    model.set_state_dict({k: state[k] for k in own})
    return export_to_repo(model, repo, _manifest(name, labels, spec, params, dataset, depth, base_width),
                          with_onnx=onnx_available())


def import_inference_model(model_file: Path, labels: list[str], repo: Path, name: str, spec: Preprocessing,
                           dataset: str = "", depth: int = 50) -> Path:
    """Publish a PaddleVideo export (``TSM.json``/``TSM.pdmodel`` + ``TSM.pdiparams``) after checking it runs."""
    params = model_file.with_suffix(".pdiparams")
    if not params.exists():
        raise FileNotFoundError(f"{params} not found beside {model_file}")
    staged = repo / name / f".stage-{uuid.uuid4().hex}"
    staged.mkdir(parents=True)
    try:
        target_model = "model" + model_file.suffix
        shutil.copyfile(model_file, staged / target_model)
        shutil.copyfile(params, staged / "model.pdiparams")
        io, outputs = probe_inference_model(staged, target_model, "model.pdiparams", spec.num_seg, spec.crop_size)
        if outputs != len(labels):
            raise ValueError(f"{model_file.name} outputs {outputs} classes but the label list has {len(labels)}")
        manifest = _manifest(name, labels, spec, params, dataset, depth, 64).model_copy(
            update={"io": io, "model_file": target_model, "paddle_version": paddle.__version__})
        return publish(repo, staged, manifest)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
