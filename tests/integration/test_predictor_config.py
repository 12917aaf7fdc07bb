"""The exact Paddle Inference configuration per mode (a recording fake of Config; no GPU here),
the CPU fallback, and the real CPU predictor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from paddle.inference import PrecisionType

from service.contract.manifest import Manifest, ModelIO, Preprocessing
from service.predictor import BackendChoice, Predictor, PredictorOptions, build_config, choose_backend

MANIFEST = Manifest(name="m", version=3, labels=["a", "b"],
                    io=ModelIO(input_name="clips", input_shape=(-1, 8, 3, 112, 112)),
                    preprocessing=Preprocessing(num_seg=8, short_side=128, crop_size=112))


class RecordingConfig:
    """Stands in for ``paddle.inference.Config``: records every call with its arguments."""

    def __init__(self, *args: Any) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [("__init__", args, {})]

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, args, kwargs))
        return record


def build(tmp_path: Path, options: PredictorOptions, has_gpu: bool) -> tuple[list[Any], BackendChoice]:
    version_dir = tmp_path / "m" / "3"
    choice = choose_backend(options, has_gpu)
    config = build_config(version_dir, MANIFEST, options, choice, config_cls=RecordingConfig)
    return config.calls, choice


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


def test_gpu_tensorrt_fp16(tmp_path: Path) -> None:
    options = PredictorOptions(device="auto", precision="fp16", tensorrt=True, gpu_memory_mb=1024,
                               trt_workspace_bytes=1 << 28, trt_min_subgraph_size=5, max_batch_size=4)
    calls, choice = build(tmp_path, options, has_gpu=True)
    cache = tmp_path / "m" / ".cache" / "3" / "trt-fp16-b4-gpu0"
    assert calls[1:] == [
        ("enable_use_gpu", (1024, 0), {}),
        ("enable_tensorrt_engine", (), {"workspace_size": 1 << 28, "max_batch_size": 4 * 8, "min_subgraph_size": 5,
                                        "precision_mode": PrecisionType.Half, "use_static": True,
                                        "use_calib_mode": False}),
        ("set_trt_dynamic_shape_info", ({"clips": [1, 8, 3, 112, 112]}, {"clips": [4, 8, 3, 112, 112]},
                                        {"clips": [4, 8, 3, 112, 112]}), {}),
        ("set_optim_cache_dir", (str(cache),), {}),
        ("switch_ir_optim", (True,), {}), ("disable_glog_info", (), {})]
    assert cache.is_dir() and choice == BackendChoice("tensorrt", "gpu:0", "fp16")


def test_tensorrt_int8(tmp_path: Path) -> None:
    calls, _ = build(tmp_path, PredictorOptions(device="gpu", precision="int8", tensorrt=True), has_gpu=True)
    trt = next(c for c in calls if c[0] == "enable_tensorrt_engine")
    assert trt[2]["precision_mode"] == PrecisionType.Int8 and trt[2]["use_calib_mode"] is False


@pytest.mark.parametrize("device", ["gpu", "auto"])
def test_no_gpu_falls_back_to_cpu_with_warning(tmp_path: Path, device: str) -> None:
    calls, choice = build(tmp_path, PredictorOptions(device=device, precision="fp16", tensorrt=True), has_gpu=False)
    assert choice.device == "cpu" and choice.precision == "fp32" and choice.backend == "paddle"
    assert any("falling back to the CPU" in w for w in choice.warnings)
    assert calls[1][0] == "disable_gpu"
    assert not [c for c in calls if c[0] in ("enable_use_gpu", "enable_tensorrt_engine")]


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
