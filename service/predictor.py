"""Paddle Inference predictor for one model version: CPU (oneDNN), GPU (CUDA) or GPU + TensorRT.

:func:`choose_backend` turns settings plus "is there a GPU" into a :class:`BackendChoice`
(``auto`` falls back to the CPU with a warning, ``gpu`` refuses); :func:`build_config` makes the exact
``paddle.inference.Config`` calls for that choice. Both are pure enough to test without a
GPU: the config class is injectable, so tests record its calls.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from service.contract.manifest import Manifest
from service.settings import Device, Precision, ServiceSettings
from service.trt_convert import TrtConversion, convert_in_subprocess, converted_model, engine_folder

log = logging.getLogger(__name__)
# Paddle's FLAGS_trt_engine_serialized_path is one per process: held while a converted model's engines are read.
_ENGINE_FLAG_LOCK = threading.Lock()


@dataclass(frozen=True)
class PredictorOptions:
    """The predictor part of the settings (see :class:`ServiceSettings` for each field)."""

    device: Device = "cpu"
    precision: Precision = "fp32"
    tensorrt: bool = False
    gpu_id: int = 0
    gpu_memory_mb: int = 1024
    cpu_threads: int = 2
    onednn: bool = True
    trt_workspace_bytes: int = 1 << 30
    trt_min_subgraph_size: int = 3
    max_batch_size: int = 8
    trt_cache_dir: Path | None = None

    @classmethod
    def from_settings(cls, s: ServiceSettings) -> PredictorOptions:
        return cls(s.device, s.precision, s.tensorrt, s.gpu_id, s.gpu_memory_mb, s.cpu_threads, s.onednn,
                   s.trt_workspace_bytes, s.trt_min_subgraph_size, s.max_batch_size, s.trt_cache_dir)


@dataclass(frozen=True)
class BackendChoice:
    """What actually runs: backend ``paddle`` or ``tensorrt``, device ``cpu``/``gpu:N``, precision."""

    backend: str
    device: str
    precision: Precision
    warnings: tuple[str, ...] = field(default=())
    hardware: str = ""
    """On a GPU, what a TensorRT engine is only valid for (:func:`gpu_signature`); empty on the CPU."""


def gpu_available() -> bool:
    """True when this Paddle build has CUDA and sees at least one device."""
    import paddle

    try:
        return bool(paddle.device.is_compiled_with_cuda()) and paddle.device.cuda.device_count() > 0
    except Exception:  # a CUDA build on a machine without a driver raises here
        return False


def gpu_signature(gpu_id: int) -> str:
    """``sm<major><minor>-trt<version>``: a serialised TensorRT engine loads only on the GPU architecture and
    TensorRT runtime that built it, so a shared cache holds one folder per pair (a mixed GPU pool, an image
    upgrade) instead of handing one node's engines to another."""
    import paddle
    from paddle import inference

    major, minor = paddle.device.cuda.get_device_capability(gpu_id)
    trt = ".".join(str(v) for v in inference.get_trt_runtime_version())
    return f"sm{major}{minor}-trt{trt}"


class NoGpuError(RuntimeError):
    """``TSM_DEVICE=gpu`` where no GPU is usable: the version is refused (a GPU node serving at CPU speed while
    its health checks pass would hide the fault); ``auto`` falls back to the CPU instead."""


def choose_backend(options: PredictorOptions, has_gpu: bool) -> BackendChoice:
    """Settings + hardware -> the backend to build; ``auto`` without a GPU: the CPU in fp32 with a warning;
    ``gpu`` without one: :class:`NoGpuError`."""
    if options.device == "gpu" and not has_gpu:
        raise NoGpuError("TSM_DEVICE=gpu, but no GPU is usable here (a CPU-only paddlepaddle, no NVIDIA driver, or "
                         "no device visible to the container: NVIDIA_VISIBLE_DEVICES, the device plugin); set "
                         "TSM_DEVICE=auto to serve on the CPU instead")
    wants_gpu = options.device == "gpu" or (options.device == "auto" and has_gpu)
    if wants_gpu and has_gpu:
        backend = "tensorrt" if options.tensorrt else "paddle"
        return BackendChoice(backend, f"gpu:{options.gpu_id}", options.precision)
    warnings: list[str] = []
    if options.tensorrt:
        warnings.append("no usable GPU found: falling back to the CPU (TensorRT off)")
    if options.precision != "fp32":
        warnings.append(f"precision {options.precision} needs a GPU: running fp32 on the CPU")
    for text in warnings:
        log.warning(text)
    return BackendChoice("paddle", "cpu", "fp32", tuple(warnings))


def trt_cache_dir(version_dir: Path, options: PredictorOptions, choice: BackendChoice) -> Path:
    """Engine cache beside the version: ``<name>/.cache/<version>/trt-<precision>-b<N>-<device>[-<hardware>]``
    (with ``trt_cache_dir``: ``<trt_cache_dir>/<name>/<version>/...``).

    Hidden (the repository scan skips dot folders) and keyed by everything that changes the
    engine, so a restart with the same settings loads the engines instead of rebuilding them.
    """
    # A shared root (TSM_TRT_CACHE_DIR) holds every model: it needs the model's name, the default one is inside it.
    root = options.trt_cache_dir / version_dir.parent.name if options.trt_cache_dir else version_dir.parent / ".cache"
    tag = f"trt-{choice.precision}-b{options.max_batch_size}-{choice.device.replace(':', '')}"
    return root / version_dir.name / (f"{tag}-{choice.hardware}" if choice.hardware else tag)


def build_config(version_dir: Path, manifest: Manifest, options: PredictorOptions, choice: BackendChoice,
                 config_cls: Callable[[str, str], Any] | None = None,
                 trt_convert: Callable[[TrtConversion, str], None] = convert_in_subprocess) -> Any:
    """The ``paddle.inference.Config`` for ``choice`` (``config_cls`` and ``trt_convert`` replace the real
    class and the TensorRT conversion in tests).

    TensorRT: a PIR model (``.json``, what this Paddle exports) is converted once by ``paddle.tensorrt`` and
    the converted pair runs on a plain GPU config; ``enable_tensorrt_engine`` only applies to a ``.pdmodel``.
    Never calls ``enable_memory_optim()``: on Paddle 3.3.1 with a PIR model it makes ``create_predictor`` fail.
    """
    from paddle import inference

    cls = config_cls or inference.Config
    model, params = version_dir / manifest.model_file, version_dir / manifest.params_file
    pir_trt = choice.backend == "tensorrt" and model.suffix == ".json"
    if pir_trt:
        model, params = converted_model(trt_conversion(version_dir, manifest, options, choice),
                                        trt_cache_dir(version_dir, options, choice), trt_convert)
    config = cls(str(model), str(params))
    if choice.device == "cpu":
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(options.cpu_threads)
        if options.onednn:
            config.enable_onednn()
            config.set_onednn_cache_capacity(10)  # distinct input shapes kept (batch sizes 1..N)
    else:
        precision = _precision_type(choice.precision)
        if choice.backend == "tensorrt":
            config.enable_use_gpu(options.gpu_memory_mb, options.gpu_id)  # precision is TensorRT's, below
            if not pir_trt:
                _enable_tensorrt(config, version_dir, manifest, options, choice, precision)
        else:
            config.enable_use_gpu(options.gpu_memory_mb, options.gpu_id, precision)
    config.switch_ir_optim(True)
    config.disable_glog_info()
    return config


def _precision_type(precision: Precision) -> Any:
    from paddle.inference import PrecisionType

    return {"fp32": PrecisionType.Float32, "fp16": PrecisionType.Half, "int8": PrecisionType.Int8}[precision]


def trt_conversion(version_dir: Path, manifest: Manifest, options: PredictorOptions,
                   choice: BackendChoice) -> TrtConversion:
    """The ``paddle.tensorrt`` conversion of a PIR model: batch axis 1..max_batch_size (clips of num_seg frames).

    Paddle is given the path without ".json" (its loader appends ".json" to what it gets, so a full file name
    would become ``model.json.json``) and finds the parameters by that stem, so both files must share it.
    ``gpu_id``: the conversion's child process sees that device alone, so its engines are built on it.
    """
    model, params = Path(manifest.model_file), Path(manifest.params_file)
    if model.stem != params.stem:
        raise ValueError(f"TensorRT conversion needs {model.name} and its parameters to share a name, "
                         f"got {params.name}")
    smallest, optimal, largest = _batch_shapes(manifest, options)
    return TrtConversion(
        model_prefix=str(version_dir / model.stem), input_name=manifest.io.input_name,
        min_shape=smallest, opt_shape=optimal, max_shape=largest,
        precision=choice.precision.upper(), workspace_bytes=options.trt_workspace_bytes,
        min_subgraph_size=options.trt_min_subgraph_size, gpu_id=options.gpu_id)


def _batch_shapes(manifest: Manifest, options: PredictorOptions) -> tuple[tuple[int, ...], ...]:
    """TensorRT's (min, opt, max) input shapes: clips of num_seg frames for each test-time crop, batches of
    1..max_batch_size (the batcher's largest batch is the shape tuned for)."""
    clip = manifest.preprocessing.input_shape[1:]
    return (1, *clip), (options.max_batch_size, *clip), (options.max_batch_size, *clip)


def _enable_tensorrt(config: Any, version_dir: Path, manifest: Manifest, options: PredictorOptions,
                     choice: BackendChoice, precision: Any) -> None:
    """TensorRT subgraphs of a ``.pdmodel`` with a dynamic batch axis 1..max_batch_size (the network sees
    N*num_seg*spatial_crops frames)."""
    config.enable_tensorrt_engine(
        workspace_size=options.trt_workspace_bytes,
        max_batch_size=options.max_batch_size * manifest.preprocessing.frames_per_clip,
        min_subgraph_size=options.trt_min_subgraph_size,
        precision_mode=precision,
        use_static=True,  # serialise engines into the optim cache dir: a restart reuses them
        use_calib_mode=False,  # int8 expects a quantised (QAT/PTQ) model, no runtime calibration
    )
    name = manifest.io.input_name
    smallest, optimal, largest = _batch_shapes(manifest, options)
    config.set_trt_dynamic_shape_info(  # by name: Paddle's positional order is (min, max, opt)
        min_input_shape={name: list(smallest)}, max_input_shape={name: list(largest)},
        optim_input_shape={name: list(optimal)})
    cache = trt_cache_dir(version_dir, options, choice)
    cache.mkdir(parents=True, exist_ok=True)
    config.set_optim_cache_dir(str(cache))


class Predictor:
    """One Paddle Inference predictor; :meth:`run` maps float32 [N, T, 3, crop, crop] -> logits [N, K].

    Paddle predictors are not thread-safe: calls are serialised with a lock (the batcher
    already runs one batch at a time per version; the lock makes that a guarantee).
    """

    def __init__(self, version_dir: Path, manifest: Manifest, options: PredictorOptions,
                 has_gpu: bool | None = None) -> None:
        from paddle import inference

        self.manifest = manifest
        self.choice = choose_backend(options, gpu_available() if has_gpu is None else has_gpu)
        if self.choice.backend == "tensorrt":  # only engines need it (and only then is TensorRT sure to be there)
            self.choice = replace(self.choice, hardware=gpu_signature(options.gpu_id))
        config = build_config(version_dir, manifest, options, self.choice)
        converted = self.choice.backend == "tensorrt" and manifest.model_file.endswith(".json")
        self._engines = engine_folder(Path(config.prog_file())) if converted else None  # until they are read
        with self._engine_flag():
            self._predictor = inference.create_predictor(config)
        self._input = self._predictor.get_input_handle(manifest.io.input_name)
        self._output_name = manifest.io.output_name
        if self._output_name not in self._predictor.get_output_names():
            raise ValueError(f"the model has no output {self._output_name!r}: {self._predictor.get_output_names()}")
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _engine_flag(self) -> Iterator[None]:
        """A converted PIR model's engines are read when its predictor is made and first run, from the paths
        stored in it or else from Paddle's process-wide ``FLAGS_trt_engine_serialized_path``, which Paddle sets
        once, for the first GPU predictor: until then it is set to this model's folder, one model at a time
        (else a second version could load the first one's engine: same file name, other weights)."""
        if self._engines is None:
            yield
            return
        import paddle

        with _ENGINE_FLAG_LOCK:
            # The flag of Paddle 3.3.1 (the pinned version); later Paddles name it FLAGS_engine_serialized_path.
            paddle.set_flags({"FLAGS_trt_engine_serialized_path": self._engines})
            yield

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 [N, num_seg * spatial_crops, 3, crop, crop] normalised RGB -> float32 logits [N, num_classes]."""
        with self._lock, self._engine_flag():
            self._input.reshape(list(batch.shape))
            self._input.copy_from_cpu(np.ascontiguousarray(batch, dtype=np.float32))
            self._predictor.run()
            self._engines = None  # read: later runs need the flag no more
            return self._predictor.get_output_handle(self._output_name).copy_to_cpu()

    def warm_up(self, runs: int, max_batch_size: int) -> int:
        """Run zeros through the network (TensorRT builds its engines here); returns the output size."""
        shape = tuple(self.manifest.io.input_shape[1:])
        out = np.empty((0, 0))
        for i in range(runs):
            n = 1 if i % 2 == 0 else max_batch_size  # both ends of the dynamic batch range
            out = self.run(np.zeros((n, *shape), dtype=np.float32))
            if out.ndim != 2 or out.shape[0] != n:
                raise ValueError(f"the model returned shape {out.shape} for a batch of {n}")
        return int(out.shape[1])


def softmax(logits: np.ndarray) -> np.ndarray:
    """float32 [N, K] logits -> probabilities [N, K], rows summing to 1 (max-shifted for stability)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)
