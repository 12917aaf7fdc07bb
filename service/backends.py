"""Which backend serves a version: the predictor factory built from the service's settings.

Shared by the server and by ``python -m training evaluate-model``, so a published model is scored exactly as
it would be served.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from service.contract.manifest import ONNX_FILE, Manifest
from service.model_version import PredictorFactory
from service.predictor import Predictor, PredictorOptions, gpu_available
from service.settings import ServiceSettings


def races_onnx(backend: str, paddle_device: str, has_onnx: bool) -> bool:
    """Whether a version's Paddle predictor is timed against ONNX Runtime (the faster one serves): with
    ``backend=auto`` on the CPU only (the GPU path is Paddle Inference, with TensorRT when enabled), when the
    version has an ONNX file and onnxruntime is installed. ``paddle_device`` is ``cpu`` or ``gpu:N``."""
    return backend == "auto" and paddle_device == "cpu" and has_onnx \
        and importlib.util.find_spec("onnxruntime") is not None


def default_factory(settings: ServiceSettings) -> PredictorFactory:
    """Paddle Inference predictors built with the settings' device options (GPU looked up once)."""
    options = PredictorOptions.from_settings(settings)
    has_gpu = gpu_available() if settings.device != "cpu" else False

    def onnx(version_dir: Path, manifest: Manifest) -> Any:
        from service.onnx_backend import OnnxPredictor

        return OnnxPredictor(version_dir, manifest, settings.cpu_threads, manifest.onnx_file or ONNX_FILE)

    def build(version_dir: Path, manifest: Manifest) -> Predictor:
        if settings.backend == "onnxruntime":
            return onnx(version_dir, manifest)  # raises (and the version is refused) without model.onnx
        paddle = Predictor(version_dir, manifest, options, has_gpu=has_gpu)
        has_onnx = bool(manifest.onnx_file) and (version_dir / str(manifest.onnx_file)).is_file()
        if not races_onnx(settings.backend, paddle.choice.device, has_onnx):
            return paddle
        from service.onnx_backend import pick_faster

        return pick_faster([paddle, onnx(version_dir, manifest)], (1, *manifest.io.input_shape[1:]))

    return build



def check_listed_files(folder: Path, manifest: Manifest) -> None:
    """Every file the manifest lists is in ``folder`` (a version copied file by file may not have finished)."""
    for file in (manifest.model_file, manifest.params_file, manifest.onnx_file):
        if file is not None and not (folder / file).is_file():
            raise FileNotFoundError(f"{file} is missing from {folder}")


def check_outputs(outputs: int, manifest: Manifest) -> None:
    """After the warm-up: the network gives one output per label of the manifest."""
    if outputs != manifest.num_classes:
        raise ValueError(f"the model has {outputs} outputs but the manifest lists {manifest.num_classes} labels")
