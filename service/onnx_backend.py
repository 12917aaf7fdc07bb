"""ONNX Runtime predictor for one model version (CPU): the same interface as :class:`service.predictor.Predictor`.

Serves ``<version>/model.onnx`` (written by :func:`training.onnx_export.export_onnx`) with
intra-op threads = ``cpu_threads``, one inter-op thread, sequential execution and all graph
optimisations on. ``run`` maps float32 [N, T, 3, crop, crop] -> logits [N, K], like Paddle's.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.contract.manifest import ONNX_FILE, Manifest
from service.predictor import BackendChoice

log = logging.getLogger(__name__)


def session_options(cpu_threads: int) -> Any:
    """``onnxruntime.SessionOptions``: intra-op = ``cpu_threads``, sequential, ORT_ENABLE_ALL."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = cpu_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only
    return opts


class OnnxPredictor:
    """One ``onnxruntime.InferenceSession`` on the CPU; calls are serialised like Paddle's predictor."""

    def __init__(self, version_dir: Path, manifest: Manifest, cpu_threads: int = 2,
                 onnx_file: str = ONNX_FILE) -> None:
        import onnxruntime as ort

        path = version_dir / onnx_file
        if not path.is_file():
            raise FileNotFoundError(f"{onnx_file} is missing from {version_dir}")
        self.manifest = manifest
        self.choice = BackendChoice("onnxruntime", "cpu", "fp32")
        self._session = ort.InferenceSession(str(path), session_options(cpu_threads),
                                             providers=["CPUExecutionProvider"])
        inputs = [i.name for i in self._session.get_inputs()]
        if inputs != [manifest.io.input_name]:
            raise ValueError(f"the ONNX model's inputs are {inputs}, the manifest expects {manifest.io.input_name!r}")
        self._output_name = self._session.get_outputs()[0].name
        self._lock = threading.Lock()

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 [N, num_seg * spatial_crops, 3, crop, crop] normalised RGB -> float32 logits [N, num_classes]."""
        feed = {self.manifest.io.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        with self._lock:
            return self._session.run([self._output_name], feed)[0]

    def warm_up(self, runs: int, max_batch_size: int) -> int:
        """Run zeros at batch 1 and ``max_batch_size`` in turn; returns the output size (classes)."""
        shape = tuple(self.manifest.io.input_shape[1:])
        out = np.empty((0, 0))
        for i in range(runs):
            n = 1 if i % 2 == 0 else max_batch_size
            out = self.run(np.zeros((n, *shape), dtype=np.float32))
            if out.ndim != 2 or out.shape[0] != n:
                raise ValueError(f"the model returned shape {out.shape} for a batch of {n}")
        return int(out.shape[1])


def pick_faster(candidates: list[Any], shape: tuple[int, ...], runs: int = 3) -> Any:
    """The candidate predictor with the lowest median time on zeros of ``shape`` (timed interleaved).

    For ``backend=auto`` on the CPU: Paddle + oneDNN and ONNX Runtime are within a few per cent of
    each other on TSM-R50 (tests/benchmarks/reports/engine.md), so measure on this machine.
    The losers are dropped (their memory is freed when the caller lets go of them).
    """
    x = np.zeros(shape, dtype=np.float32)
    times: list[list[float]] = [[] for _ in candidates]
    for p in candidates:
        p.run(x)  # warm-up (oneDNN primitive creation, ORT arena)
    for _ in range(runs):
        for i, p in enumerate(candidates):
            t0 = time.perf_counter()
            p.run(x)
            times[i].append(time.perf_counter() - t0)
    best = min(range(len(candidates)), key=lambda i: statistics.median(times[i]))
    log.info("backend auto: %s", ", ".join(f"{c.choice.backend} {statistics.median(t) * 1e3:.0f} ms"
                                          for c, t in zip(candidates, times, strict=True)))
    return candidates[best]
