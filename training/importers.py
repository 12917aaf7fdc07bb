"""Import models made by PaddleVideo itself into ``model_repo``.

Two sources: a training checkpoint (``TSM_k400.pdparams``: a state dict with ``backbone.*``
and ``head.*`` keys) which we load into our identical network and export, or an inference
export (``TSM.pdmodel``/``TSM.json`` + ``TSM.pdiparams``) which we publish as it is.

A TSN checkpoint has exactly TSM's keys and shapes (the shift has no weights), so only the
caller can say which one it is (``shift=False``).
"""

from __future__ import annotations

import logging
import re
import shutil
import uuid
from pathlib import Path

import paddle

from service.contract.manifest import Manifest, ModelIO, Preprocessing
from training.checkpoint import load_state_file, read_meta
from training.export import check_name, export_to_repo, onnx_available, probe_inference_model, publish, sha256_file
from training.tsm import build_tsm

log = logging.getLogger(__name__)

_STAGE4_BLOCKS = {6: 50, 23: 101, 36: 152}
_CONVS_TO_DEPTH = {21: 18, 37: 34, 53: 50, 104: 101, 155: 152}
"""Conv kernels (4-D tensors) of PaddleVideo's ResNet-TSM at each depth, stem and shortcuts included."""
UNKNOWN = "unknown"


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


def export_param_shapes(model_file: Path) -> list[tuple[int, ...]]:
    """Shapes of an exported model's tensors (parameters and BN statistics), as ``paddle.jit.load`` reads them."""
    layer = paddle.jit.load(str(model_file.with_suffix("")))
    return [tuple(v.shape) for v in layer.state_dict().values()]


def infer_export_architecture(model_file: Path) -> tuple[int, int] | None:
    """(depth, base_width) of an exported ResNet-TSM from its tensor shapes; None when it is not one we know."""
    try:
        shapes = export_param_shapes(model_file)
    except Exception as exc:  # whatever Paddle raises on a graph it cannot load as a layer
        log.warning("cannot read the tensor shapes of %s: %s", model_file, exc)
        return None
    kernels = [s for s in shapes if len(s) == 4]
    stems = [s for s in kernels if s[1:] == (3, 7, 7)]
    depth = _CONVS_TO_DEPTH.get(len(kernels))
    if depth is None or len(stems) != 1:
        return None
    return depth, stems[0][0]


def has_fused_shift(model_file: Path) -> bool:
    """Whether an exported graph calls Paddle's ``temporal_shift`` op, as PaddleVideo's TSM exports do.

    Without it the graph may still shift with slices (our own exports), so False proves nothing.
    """
    return b"temporal_shift" in model_file.read_bytes()


def _manifest(name: str, labels: list[str], spec: Preprocessing, source: Path, dataset: str,
              depth: int, base_width: int, shift: bool) -> Manifest:
    """``depth`` 0 means the network is not a ResNet we recognise; base_width is then 0 as well."""
    backbone = f"ResNet{'TSM' if shift else 'TSN'}-{depth}" if depth else UNKNOWN
    return Manifest(
        name=name, version=1, labels=labels, preprocessing=spec,
        io=ModelIO(input_shape=spec.input_shape),
        backbone=backbone, depth=depth, base_width=base_width, shift=shift, dataset=dataset,
        source=source.name, source_sha256=sha256_file(source), config={"imported_from": "PaddleVideo"},
    )


def import_checkpoint(params: Path, labels: list[str], repo: Path, name: str, spec: Preprocessing,
                      dataset: str = "", shift: bool = True) -> Path:
    """Load a PaddleVideo TSM ``.pdparams`` (TSN with ``shift=False``) into our network, every key matching,
    and export it."""
    check_name(name)
    if read_meta(params).get("config"):  # its preprocessing and class names would give way to the options'
        raise ValueError(f"{params} is a checkpoint of this project's training ({params.with_suffix('.json').name} "
                         f"records its config): publish it with python -m training export -c <its config> "
                         f"--checkpoint {params}, which keeps its preprocessing and class names")
    state = load_state_file(params)
    depth, num_classes, base_width = infer_architecture(state)
    if num_classes != len(labels):
        raise ValueError(f"{params.name} has {num_classes} classes but the label list has {len(labels)}")
    model = build_tsm(depth, num_classes, spec.num_seg, shift=shift, base_width=base_width)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(k for k in set(state) - set(own) if not k.endswith("num_batches_tracked"))
    if missing or unexpected:
        raise ValueError(f"{params.name} does not match ResNetTSM-{depth}: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    model.set_state_dict({k: state[k] for k in own})
    manifest = _manifest(name, labels, spec, params, dataset, depth, base_width, shift)
    return export_to_repo(model, repo, manifest, with_onnx=onnx_available())


def import_inference_model(model_file: Path, labels: list[str], repo: Path, name: str, spec: Preprocessing,
                           dataset: str = "", shift: bool = True) -> Path:
    """Publish a PaddleVideo export (``TSM.json``/``TSM.pdmodel`` + ``TSM.pdiparams``) after checking it runs.

    The manifest's depth and base width come from the tensor shapes (0 and backbone "unknown" when
    the network is not a ResNet-TSM we know); ``shift`` says whether it is TSM or TSN.
    """
    check_name(name)
    params = model_file.with_suffix(".pdiparams")
    if not params.exists():
        raise FileNotFoundError(f"{params} not found beside {model_file}")
    if not shift and has_fused_shift(model_file):
        raise ValueError(f"{model_file.name} calls temporal_shift: it is a TSM export, not TSN (drop --tsn)")
    depth, base_width = infer_export_architecture(model_file) or (0, 0)
    staged = repo / name / f".stage-{uuid.uuid4().hex}"
    staged.mkdir(parents=True)
    try:
        target_model = "model" + model_file.suffix
        shutil.copyfile(model_file, staged / target_model)
        shutil.copyfile(params, staged / "model.pdiparams")
        io, outputs = probe_inference_model(staged, target_model, "model.pdiparams", spec.frames_per_clip,
                                            spec.crop_size)
        if outputs != len(labels):
            raise ValueError(f"{model_file.name} outputs {outputs} classes but the label list has {len(labels)}")
        manifest = _manifest(name, labels, spec, params, dataset, depth, base_width, shift).model_copy(
            update={"io": io, "model_file": target_model, "paddle_version": paddle.__version__})
        return publish(repo, staged, manifest)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
