"""Every CPU backend agrees with the dygraph network to 1e-4 relative (tiny TSM-R18, 64 px).

Backends: Paddle Inference with and without oneDNN (the service's :class:`Predictor`), for the
slice and the fused shift export, and ONNX Runtime on a paddle2onnx export of each.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import paddle
import pytest

from service.contract.manifest import Manifest, ModelIO, Preprocessing
from service.onnx_backend import OnnxPredictor, pick_faster
from service.predictor import Predictor, PredictorOptions
from training.export import export_to_repo
from training.onnx_export import export_onnx
from training.tsm import build_tsm

SPEC = Preprocessing(num_seg=4, short_side=64, crop_size=64)
RTOL = 1e-4


def _export(repo: Path, shift_impl: str) -> tuple[Path, paddle.nn.Layer]:
    paddle.seed(3)
    model = build_tsm(18, num_classes=7, num_seg=SPEC.num_seg, base_width=8, shift_impl=shift_impl)  # type: ignore[arg-type]
    model.eval()
    manifest = Manifest(name=f"net-{shift_impl}", version=1, labels=[f"c{i}" for i in range(7)], preprocessing=SPEC,
                        io=ModelIO(input_shape=(-1, SPEC.num_seg, 3, 64, 64)), depth=18, base_width=8)
    return export_to_repo(model, repo, manifest), model


def _close(got: np.ndarray, want: np.ndarray) -> None:
    """Relative agreement, scaled by the largest logit (logits near 0 make element-wise rtol meaningless)."""
    assert got.shape == want.shape
    err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
    assert err <= RTOL, f"max relative difference {err:.2e} > {RTOL}"


@pytest.fixture(scope="module", params=["slice", "fused"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray,
                                                                                                np.ndarray]:
    """(version folder with model.onnx, input [3, T, 3, 64, 64], dygraph logits [3, 7])."""
    folder, model = _export(tmp_path_factory.mktemp("repo"), request.param)
    export_onnx(folder)
    x = np.random.default_rng(0).standard_normal((3, SPEC.num_seg, 3, 64, 64)).astype(np.float32)
    with paddle.no_grad():
        want = model(paddle.to_tensor(x)).numpy()
    return folder, x, want


@pytest.mark.parametrize("onednn", [True, False])
def test_paddle_inference_matches_dygraph(exported: tuple[Path, np.ndarray, np.ndarray], onednn: bool) -> None:
    folder, x, want = exported
    predictor = Predictor(folder, Manifest.read(folder), PredictorOptions(device="cpu", onednn=onednn), has_gpu=False)
    _close(predictor.run(x), want)
    _close(predictor.run(x[:1]), want[:1])


def test_onnxruntime_matches_dygraph(exported: tuple[Path, np.ndarray, np.ndarray]) -> None:
    folder, x, want = exported
    predictor = OnnxPredictor(folder, Manifest.read(folder), cpu_threads=2)
    assert predictor.choice.backend == "onnxruntime"
    _close(predictor.run(x), want)
    _close(predictor.run(x[:1]), want[:1])  # the batch axis is dynamic
    assert predictor.warm_up(2, 3) == 7


def test_onnx_export_is_atomic_and_checked(exported: tuple[Path, np.ndarray, np.ndarray]) -> None:
    folder, _, _ = exported
    assert (folder / "model.onnx").is_file()
    assert not [p for p in folder.iterdir() if p.name.startswith(".model.onnx")]


def test_missing_onnx_file_is_refused(tmp_path: Path) -> None:
    manifest = Manifest(name="x", version=1, labels=["a"], preprocessing=SPEC,
                        io=ModelIO(input_shape=(-1, SPEC.num_seg, 3, 64, 64)))
    with pytest.raises(FileNotFoundError, match=r"model\.onnx"):
        OnnxPredictor(tmp_path, manifest)


class _Sleeper:
    def __init__(self, name: str, seconds: float) -> None:
        self.choice = SimpleNamespace(backend=name)
        self.seconds = seconds

    def run(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds)
        return np.zeros((batch.shape[0], 2), np.float32)


def test_pick_faster_keeps_the_quicker_backend() -> None:
    slow, fast = _Sleeper("paddle", 0.03), _Sleeper("onnxruntime", 0.001)
    assert pick_faster([slow, fast], (1, 4, 3, 8, 8)) is fast
    assert pick_faster([fast, slow], (1, 4, 3, 8, 8)) is fast
