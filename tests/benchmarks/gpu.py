"""GPU benchmark (NOT YET MEASURED: no GPU machine was available when this was written).

For a machine with an NVIDIA GPU and a CUDA build of Paddle: TSM-R50 8x224 through the
service's own :class:`service.predictor.Predictor` as native GPU fp32, TensorRT fp32 and
TensorRT fp16, batch 1..64 -> clips/s and latency per batch (p50/p90), interleaved across
engines per round; then end to end with decoding: ``--decoders`` processes decode + preprocess
the 720p mix while the main process batches and runs TensorRT fp16 -> clips/s.

    python -m tests.benchmarks.gpu --batches 1,2,4,8,16,32,64 --rounds 10

Refuses to run (exit status 2, a clear message) when no GPU is visible.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from tests.benchmarks.common import clip_set, export_r50, interleave, median, pct, table, write_report

ENGINES = {"native GPU fp32": ("fp32", False), "TensorRT fp32": ("fp32", True), "TensorRT fp16": ("fp16", True)}


def require_gpu() -> None:
    from service.predictor import gpu_available

    if not gpu_available():
        print("tests.benchmarks.gpu needs an NVIDIA GPU and a CUDA build of paddlepaddle (paddlepaddle-gpu); "
              "none is visible here. Run the CPU benchmarks instead: python -m tests.benchmarks", file=sys.stderr)
        sys.exit(2)


def predictor(folder: Path, precision: str, tensorrt: bool, max_batch: int) -> object:
    from service.contract.manifest import Manifest
    from service.predictor import Predictor, PredictorOptions

    options = PredictorOptions(device="gpu", precision=precision, tensorrt=tensorrt,  # type: ignore[arg-type]
                               max_batch_size=max_batch, gpu_memory_mb=4096)
    p = Predictor(folder, Manifest.read(folder), options, has_gpu=True)
    p.warm_up(4, max_batch)
    return p


def engine_section(folder: Path, batches: list[int], rounds: int) -> str:
    engines = {name: predictor(folder, prec, trt, max(batches)) for name, (prec, trt) in ENGINES.items()}
    rows = []
    for n in batches:
        x = np.random.default_rng(0).standard_normal((n, 8, 3, 224, 224)).astype(np.float32)
        times = interleave({k: (lambda p=p, x=x: p.run(x)) for k, p in engines.items()}, rounds, warmup=2)
        for k, t in times.items():
            rows.append([k, n, n / median(t), pct(t, 50) * 1e3, pct(t, 90) * 1e3])
    return "## Engines (R50 8x224)\n\n" + table(["engine", "batch", "clips/s", "p50 ms", "p90 ms"], rows)


def _decode(path: str) -> np.ndarray:
    from service.contract.manifest import Preprocessing
    from service.contract.preprocess import preprocess_clip
    from service.decoding import read_clip

    spec = Preprocessing()
    return preprocess_clip(read_clip(Path(path), spec)[0], spec)


def e2e_section(folder: Path, decoders: int, videos: int, batch: int) -> str:
    """``decoders`` processes decode; the main process runs TensorRT fp16 on batches of ``batch``."""
    engine = predictor(folder, "fp16", True, batch)
    files = [str(p) for p in clip_set().values()]
    work = [files[i % len(files)] for i in range(videos)]
    t0 = time.perf_counter()
    pending: list[np.ndarray] = []
    with ProcessPoolExecutor(decoders) as pool:
        for clip in pool.map(_decode, work):
            pending.append(clip)
            if len(pending) == batch:
                engine.run(np.stack(pending))  # type: ignore[attr-defined]
                pending.clear()
        if pending:
            engine.run(np.stack(pending))  # type: ignore[attr-defined]
    wall = time.perf_counter() - t0
    return (f"## End to end with decoding ({decoders} decoder processes, TensorRT fp16, batch {batch})\n\n"
            + table(["videos", "wall s", "clips/s"], [[videos, wall, videos / wall]]))


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", default="1,2,4,8,16,32,64")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--decoders", type=int, default=8)
    ap.add_argument("--videos", type=int, default=64)
    args = ap.parse_args(argv)
    require_gpu()
    folder = export_r50("slice")
    batches = [int(b) for b in args.batches.split(",")]
    sections = [engine_section(folder, batches, args.rounds), e2e_section(folder, args.decoders, args.videos, 16)]
    return write_report("gpu", "GPU: TensorRT fp16 / fp32 vs native GPU", sections)


if __name__ == "__main__":
    main()
