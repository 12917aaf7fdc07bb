"""Convert a published Paddle inference model (PIR ``model.json`` + ``model.pdiparams``) to ONNX.

The ONNX file is written beside the Paddle files as ``model.onnx`` (opset 13+, batch axis
dynamic: paddle2onnx keeps the ``-1`` of the saved ``InputSpec``), so a version folder can be
served by either Paddle Inference or ONNX Runtime with the same manifest.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from service.contract.manifest import ONNX_FILE, Manifest

log = logging.getLogger(__name__)

OPSET = 13


def export_onnx(version_folder: Path, opset: int = OPSET) -> Path:
    """``version_folder/model.onnx`` from the folder's Paddle model (its manifest names the files)."""
    manifest = Manifest.read(version_folder)
    return convert(version_folder, manifest.model_file, manifest.params_file, manifest.io.input_name, opset)


def convert(folder: Path, model_file: str, params_file: str, input_name: str, opset: int = OPSET) -> Path:
    """``folder/model.onnx`` from ``folder/model_file`` + ``params_file``; returns its path.

    Written to a hidden temporary name, checked, then renamed into place, so a reader never sees
    half a file. The input keeps its Paddle name (``data_batch_0``), shape [N, T, 3, crop, crop].
    Usable on a staged folder before :func:`training.export.publish` (no manifest needed).
    """
    import paddle2onnx

    if not model_file.endswith(".json"):
        log.warning("%s is not a PIR model; paddle2onnx translates it first", model_file)
    target = folder / ONNX_FILE
    tmp = folder / f".{ONNX_FILE}.{uuid.uuid4().hex}"
    try:
        paddle2onnx.export(str(folder / model_file), str(folder / params_file), save_file=str(tmp),
                           opset_version=opset, auto_upgrade_opset=True, enable_onnx_checker=True,
                           enable_optimize=True, deploy_backend="onnxruntime")
        check_onnx(tmp, input_name)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote %s", target)
    return target


def check_onnx(path: Path, input_name: str) -> None:
    """Raise ValueError unless the ONNX graph has the one input ``input_name`` with a dynamic batch axis."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inputs = [i for i in graph.input if i.name not in {init.name for init in graph.initializer}]
    if len(inputs) != 1 or inputs[0].name != input_name:
        raise ValueError(f"expected one input {input_name!r}, got {[i.name for i in inputs]}")
    batch = inputs[0].type.tensor_type.shape.dim[0]
    if batch.HasField("dim_value") and batch.dim_value > 0:
        raise ValueError(f"the ONNX batch axis is fixed at {batch.dim_value}; expected a dynamic axis")
