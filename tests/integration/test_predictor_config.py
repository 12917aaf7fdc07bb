"""The exact Paddle Inference configuration per mode (a recording fake of Config; no GPU here), the CPU
fallback, and the real CPU predictor. TensorRT's configuration and conversion: test_tensorrt_config.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from paddle.inference import PrecisionType

from service.backends import races_onnx
from service.contract.manifest import Manifest
from service.predictor import (
    BackendChoice,
    Predictor,
    PredictorOptions,
    choose_backend,
)
from tests.integration.predictor_fakes import (
    RecordingConfig,
    build,
    paddle_signature,
)


def test_cpu_onednn(tmp_path: Path) -> None:
    calls, choice = build(tmp_path, PredictorOptions(device="cpu", cpu_threads=3), has_gpu=True)
    d = tmp_path / "m" / "3"
    assert calls == [
        ("__init__", (str(d / "model.json"), str(d / "model.pdiparams")), {}),
        ("disable_gpu", (), {}), ("set_cpu_math_library_num_threads", (3,), {}),
        ("enable_onednn", (), {}), ("set_onednn_cache_capacity", (10,), {}),
        ("switch_ir_optim", (True,), {}), ("disable_glog_info", (), {})]
    assert choice == BackendChoice("paddle", "cpu", "fp32")
    assert "enable_memory_optim" not in [c[0] for c in calls]


def test_gpu_cuda_fp16(tmp_path: Path) -> None:
    calls, choice = build(tmp_path, PredictorOptions(device="gpu", precision="fp16", gpu_id=1, gpu_memory_mb=500),
                          has_gpu=True)
    assert calls[1:] == [("enable_use_gpu", (500, 1, PrecisionType.Half), {}),
                         ("switch_ir_optim", (True,), {}), ("disable_glog_info", (), {})]
    assert choice == BackendChoice("paddle", "gpu:1", "fp16")


def test_recorded_calls_are_bound_to_paddles_own_signatures() -> None:
    """What makes the recording honest: a keyword Paddle does not take, or a method it does not have, fails."""
    shapes = paddle_signature("set_trt_dynamic_shape_info")
    assert list(shapes.parameters)[:3] == ["min_input_shape", "max_input_shape", "optim_input_shape"]
    with pytest.raises(TypeError):
        shapes.bind(min_input_shape={}, opt_input_shape={})
    with pytest.raises(TypeError):
        paddle_signature("enable_use_gpu").bind()  # memory_pool_init_size_mb has no default
    with pytest.raises(AttributeError):
        RecordingConfig("m.json", "m.pdiparams").enable_tensorrt_engines()
    with pytest.raises(TypeError):
        paddle_signature("set_cpu_math_library_num_threads").bind(arg0=3)


def test_auto_without_a_gpu_falls_back_to_cpu_with_warning(tmp_path: Path) -> None:
    calls, choice = build(tmp_path, PredictorOptions(device="auto", precision="fp16", tensorrt=True), has_gpu=False)
    assert choice.device == "cpu" and choice.precision == "fp32" and choice.backend == "paddle"
    assert any("falling back to the CPU" in w for w in choice.warnings)
    assert calls[1][0] == "disable_gpu"
    assert not [c for c in calls if c[0] in ("enable_use_gpu", "enable_tensorrt_engine")]


def test_gpu_asked_for_without_one_is_refused_not_served_on_the_cpu() -> None:
    """The GPU image sets TSM_DEVICE=gpu: on a node whose GPU is missing it must not pass its health checks."""
    from service.predictor import NoGpuError

    with pytest.raises(NoGpuError, match=r"TSM_DEVICE=gpu, but no GPU is usable here .* set TSM_DEVICE=auto"):
        choose_backend(PredictorOptions(device="gpu", precision="fp16", tensorrt=True), has_gpu=False)


def test_real_cpu_predictor(tiny_repo_template: Path) -> None:
    folder = tiny_repo_template / "tiny" / "1"
    manifest = Manifest.read(folder)
    predictor = Predictor(folder, manifest, PredictorOptions(device="cpu", cpu_threads=1), has_gpu=False)
    assert predictor.warm_up(2, 3) == len(manifest.labels)
    batch = np.random.default_rng(0).standard_normal((3, 8, 3, 112, 112)).astype(np.float32)
    together = predictor.run(batch)
    alone = np.concatenate([predictor.run(batch[i:i + 1]) for i in range(3)])
    assert together.shape == (3, len(manifest.labels))
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)  # batching doesn't change a clip's logits


def test_onnx_runtime_is_raced_only_against_a_cpu_predictor() -> None:
    gpu = choose_backend(PredictorOptions(device="auto"), has_gpu=True).device
    assert gpu == "gpu:0" and not races_onnx("auto", gpu, has_onnx=True)  # a GPU never loses to a CPU session
    assert races_onnx("auto", "cpu", has_onnx=True)  # onnxruntime is installed with the dev extras
    assert not races_onnx("auto", "cpu", has_onnx=False) and not races_onnx("paddle", "cpu", has_onnx=True)
