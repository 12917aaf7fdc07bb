"""Export a TSM network as a Paddle inference model and publish it into ``model_repo``.

Publishing is atomic: the version is assembled in a hidden temporary folder beside the
final one and renamed into place, so a reader never sees half a version. A version number is
never issued twice for a model, even after its folder was deleted (see :func:`claim_version`).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import paddle
from paddle.static import InputSpec

from service.contract.manifest import (
    MODEL_PREFIX,
    ONNX_FILE,
    Manifest,
    ModelIO,
    is_number,
    is_valid_name,
    list_versions,
)

log = logging.getLogger(__name__)

ISSUED_DIR = ".issued-versions"
"""``<repo>/<name>/.issued-versions/<n>``: one empty file per version number ever issued (hidden from the service)."""
CACHE_DIR = ".cache"
"""The service's TensorRT engine cache, ``<repo>/<name>/.cache/<version>/``."""


def check_name(name: str) -> None:
    """Refuse a model name that is not a plain folder name, before anything is written."""
    if not is_valid_name(name):
        raise ValueError(f"invalid model name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a "
                         "letter or digit, without '..'")


def as_nchw(model: paddle.nn.Layer) -> paddle.nn.Layer:
    """An NCHW twin of an NHWC network (same state dict). NHWC is a GPU-training speed-up;
    Paddle Inference's oneDNN passes mis-handle NHWC convs, and TensorRT picks its own layout."""
    if getattr(model, "data_format", "NCHW") != "NHWC":
        return model
    from training.tsm import build_tsm

    twin = build_tsm(**{**model.arch, "data_format": "NCHW"})  # type: ignore[arg-type]
    twin.set_state_dict(model.state_dict())
    return twin


def save_inference_model(model: paddle.nn.Layer, prefix: Path, frames: int, crop_size: int) -> tuple[str, str]:
    """``paddle.jit.save`` the eval-mode network with input [None, frames, 3, crop, crop] (``frames``: num_seg for
    each test-time crop, see :class:`~training.tsm.recognizer.Recognizer2D`).

    Returns the (model file, params file) names written next to ``prefix``: Paddle 3 writes
    ``<prefix>.json`` (PIR), Paddle 2 ``<prefix>.pdmodel``; both write ``<prefix>.pdiparams``.
    """
    was_training = model.training
    model.eval()
    spec = [InputSpec([None, frames, 3, crop_size, crop_size], "float32")]
    static = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
    try:
        paddle.jit.save(static, str(prefix))
    finally:
        if was_training:
            model.train()
    for suffix in (".json", ".pdmodel"):
        if prefix.with_suffix(suffix).exists():
            return prefix.name + suffix, prefix.name + ".pdiparams"
    raise RuntimeError(f"paddle.jit.save wrote no model file next to {prefix}")


def probe_inference_model(folder: Path, model_file: str, params_file: str, frames: int,
                          crop: int) -> tuple[ModelIO, int]:
    """Build a Paddle Inference predictor on the saved files: their feed/fetch names and class count.

    Raises unless one clip of ``frames`` frames at ``crop`` px gives one row of finite scores (a graph exported for
    another segment count folds the frames into other rows: the service would refuse it at load), and unless they
    are logits: a model that ends in a softmax would have every served score come out ~1/K."""
    from paddle import inference

    config = inference.Config(str(folder / model_file), str(folder / params_file))
    config.disable_gpu()
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    io = ModelIO(input_name=predictor.get_input_names()[0], output_name=predictor.get_output_names()[0],
                 input_shape=(-1, frames, 3, crop, crop))
    zeros = np.zeros((1, frames, 3, crop, crop), np.float32)
    noise = np.random.default_rng(0).standard_normal(zeros.shape).astype(np.float32)
    outputs = [_run(predictor, io, clip) for clip in (zeros, noise)]
    shape = outputs[0].shape
    if len(shape) != 2 or shape[0] != 1:
        raise ValueError(f"{model_file}: one clip of {frames} frames at {crop}x{crop} gave output shape "
                         f"{list(shape)}, not [1, classes]: the model takes another number of segments or crop "
                         "size (PaddleVideo's TSM exports: --num-seg 8, crop 224)")
    if not all(np.isfinite(scores).all() for scores in outputs):
        raise ValueError(f"{model_file}: the model gives scores that are not finite (NaN or infinite) for a clip of "
                         "zeros or of random values: its weights are broken")
    if shape[-1] > 1 and all((scores >= 0).all() and abs(float(scores.sum()) - 1.0) < 1e-4 for scores in outputs):
        raise ValueError(f"{model_file}: the model's output is already probabilities (it ends in a softmax: the "
                         "scores are non-negative and sum to 1), and the service applies its own softmax to a "
                         "model's logits; export it without the softmax (PaddleVideo's TSM head returns logits)")
    return io, int(shape[-1])


def _run(predictor: Any, io: ModelIO, clip: np.ndarray) -> np.ndarray:
    """The predictor's output for ``clip``."""
    handle = predictor.get_input_handle(io.input_name)
    handle.reshape(list(clip.shape))
    handle.copy_from_cpu(clip)
    predictor.run()
    return predictor.get_output_handle(io.output_name).copy_to_cpu()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _numbered(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return [int(p.name) for p in folder.iterdir() if is_number(p.name)]


def claim_version(model_dir: Path) -> int:
    """Reserve the next version number of a model for this publisher alone.

    The number goes above every published version, every TensorRT cache folder and every number
    issued before: a deleted version's number must not come back, or a service already past it
    would never load the new model and a cached engine of the old one would be reused for it.
    The claim is an exclusive file create, so two publishers at once never get the same number.
    """
    issued = model_dir / ISSUED_DIR
    issued.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        seen = list_versions(model_dir) + _numbered(model_dir / CACHE_DIR) + _numbered(issued)
        version = max(seen, default=0) + 1
        try:
            (issued / str(version)).open("x").close()
        except FileExistsError:  # another publisher claimed it between our scan and our create
            continue
        return version
    raise RuntimeError(f"could not claim a version number under {model_dir}")


def publish(repo: Path, staged: Path, manifest: Manifest) -> Path:
    """Move a staged version folder into ``repo/<name>/<next version>`` atomically.

    ``staged`` holds the model files; the manifest is (re)written there with the version it
    finally gets, and the folder is renamed into place. Returns the published folder.
    """
    check_name(manifest.name)
    model_dir = repo / manifest.name
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f".tmp-{uuid.uuid4().hex}"
    shutil.move(str(staged), tmp)  # same filesystem from here on, so the rename below is atomic
    try:
        for _ in range(100):
            version = claim_version(model_dir)
            final = manifest.model_copy(update={"version": version})
            final.write(tmp)
            try:
                os.rename(tmp, model_dir / str(version))
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                continue  # a folder made by hand holds this number: claim the next one
            log.info("published %s version %d at %s", manifest.name, version, model_dir / str(version))
            return model_dir / str(version)
        raise RuntimeError(f"could not find a free version number under {model_dir}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def onnx_available() -> bool:
    """Whether paddle2onnx is installed (the ``onnx`` extra)."""
    import importlib.util

    return importlib.util.find_spec("paddle2onnx") is not None


def export_to_repo(model: paddle.nn.Layer, repo: Path, manifest: Manifest, with_onnx: bool = False) -> Path:
    """Save ``model`` as an inference model (and as ONNX with ``with_onnx``), check its IO, publish it."""
    check_name(manifest.name)
    spec = manifest.preprocessing
    staging = repo / manifest.name
    staging.mkdir(parents=True, exist_ok=True)
    staged = staging / f".stage-{uuid.uuid4().hex}"
    staged.mkdir()
    try:
        model_file, params_file = save_inference_model(as_nchw(model), staged / MODEL_PREFIX, spec.frames_per_clip,
                                                       spec.crop_size)
        io, outputs = probe_inference_model(staged, model_file, params_file, spec.frames_per_clip, spec.crop_size)
        if outputs != manifest.num_classes:
            raise ValueError(f"the model outputs {outputs} classes but the manifest has {manifest.num_classes} labels")
        onnx_file = None
        if with_onnx:
            from training.onnx_export import convert

            convert(staged, model_file, params_file, io.input_name)
            onnx_file = ONNX_FILE
        manifest = manifest.model_copy(update={
            "model_file": model_file, "params_file": params_file, "io": io, "paddle_version": paddle.__version__,
            "data_format": "NCHW", "onnx_file": onnx_file,
        })
        return publish(repo, staged, manifest)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
