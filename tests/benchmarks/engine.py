"""Model engine: TSM-R50 8x224, batch 1, on the CPU vs the machine's sgemm rate and ONNX Runtime.

Variants, timed interleaved with a 2048^3 numpy sgemm in every round: Paddle Inference +
oneDNN on the fused-shift export (PaddleVideo's), on the slice export (what we ship), on the
network without shift, ONNX Runtime on a paddle2onnx export of the slice model, and Paddle
Inference knobs (oneDNN off, IR optimisation off, unlimited oneDNN cache, set_optimization_level).
Optionally (``--workers``) two single-thread processes side by side vs one two-thread one.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tests.benchmarks.common import (
    R50_GFLOP,
    export_r50,
    interleave,
    median,
    sgemm_gflops,
    sgemm_once,
    table,
    write_report,
)

Runner = Callable[[np.ndarray], np.ndarray]


def paddle_runner(folder: Path, threads: int, onednn: bool = True, ir_optim: bool = True, cache: int = 10,
                  opt_level: int | None = None) -> Runner:
    """A Paddle Inference predictor on ``folder`` built with the given knobs -> ``run(x) -> logits``."""
    from paddle import inference

    from service.contract.manifest import Manifest

    m = Manifest.read(folder)
    config = inference.Config(str(folder / m.model_file), str(folder / m.params_file))
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(threads)
    if onednn:
        config.enable_onednn()
        config.set_onednn_cache_capacity(cache)
    else:
        config.disable_onednn()
    if opt_level is not None:
        config.set_optimization_level(opt_level)
    config.switch_ir_optim(ir_optim)
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    handle = predictor.get_input_handle(m.io.input_name)
    out = predictor.get_output_handle(m.io.output_name)

    def run(x: np.ndarray) -> np.ndarray:
        handle.reshape(list(x.shape))
        handle.copy_from_cpu(x)
        predictor.run()
        return out.copy_to_cpu()
    return run


def onnx_runner(folder: Path, threads: int) -> Runner:
    from service.contract.manifest import Manifest
    from service.onnx_backend import OnnxPredictor
    from training.onnx_export import export_onnx

    if not (folder / "model.onnx").is_file():
        export_onnx(folder)
    return OnnxPredictor(folder, Manifest.read(folder), cpu_threads=threads).run


def build_variants(threads: int, knobs: bool) -> dict[str, Runner]:
    fused, slice_, plain = export_r50("fused", shift_impl="fused"), export_r50("slice"), export_r50("noshift",
                                                                                                    shift=False)
    variants = {
        "paddle+oneDNN, fused shift (PaddleVideo)": paddle_runner(fused, threads),
        "paddle+oneDNN, slice shift (shipped)": paddle_runner(slice_, threads),
        "paddle+oneDNN, no shift (TSN)": paddle_runner(plain, threads),
    }
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("paddle2onnx"):
        variants["onnxruntime, slice export"] = onnx_runner(slice_, threads)
    else:
        print("onnxruntime/paddle2onnx missing (pip install -e '.[onnx]'): skipping the ONNX Runtime variant")
    if knobs:
        variants |= {
            "slice, oneDNN off": paddle_runner(slice_, threads, onednn=False),
            "slice, switch_ir_optim(False)": paddle_runner(slice_, threads, ir_optim=False),
            "slice, oneDNN cache 0 (unlimited)": paddle_runner(slice_, threads, cache=0),
            "slice, set_optimization_level(3)": paddle_runner(slice_, threads, opt_level=3),
        }
    return variants


def check_agreement(variants: dict[str, Runner], x: np.ndarray) -> dict[str, float]:
    """Max |diff| / max |ref| of each variant's logits against the shipped one (same weights, seed 0)."""
    ref = variants["paddle+oneDNN, slice shift (shipped)"](x)
    return {k: float(np.abs(fn(x) - ref).max() / np.abs(ref).max()) for k, fn in variants.items()
            if "no shift" not in k}


def _worker(folder: str, clips: int, start: float, queue: mp.Queue) -> None:
    run = paddle_runner(Path(folder), 1)
    x = np.random.default_rng(0).standard_normal((1, 8, 3, 224, 224)).astype(np.float32)
    run(x)
    while time.time() < start:
        time.sleep(0.01)
    t0 = time.perf_counter()
    for _ in range(clips):
        run(x)
    queue.put(time.perf_counter() - t0)


def workers_section(clips: int) -> str:
    """Throughput of two 1-thread worker processes side by side vs one 2-thread predictor (clips/s)."""
    folder = export_r50("slice")
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    start = time.time() + 40  # both processes load and warm up before the common start
    procs = [ctx.Process(target=_worker, args=(str(folder), clips, start, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    walls = [queue.get(timeout=1200) for _ in procs]
    for p in procs:
        p.join()
    two = 2 * clips / max(walls)
    run = paddle_runner(folder, 2)
    x = np.random.default_rng(0).standard_normal((1, 8, 3, 224, 224)).astype(np.float32)
    run(x)
    t0 = time.perf_counter()
    for _ in range(2 * clips):
        run(x)
    one = 2 * clips / (time.perf_counter() - t0)
    return ("## Thread layout (slice export, sequential, not interleaved)\n\n"
            + table(["layout", "clips/s", "ratio"], [["2 processes x 1 thread", two, two / one],
                                                     ["1 process x 2 threads", one, 1.0]]))


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-knobs", action="store_true", help="only the four main variants")
    ap.add_argument("--workers", type=int, default=0, help="clips per worker for the thread-layout test (0: skip)")
    args = ap.parse_args(argv)
    variants = build_variants(args.threads, not args.no_knobs)
    x = np.random.default_rng(0).standard_normal((1, 8, 3, 224, 224)).astype(np.float32)
    agree = check_agreement(variants, x)
    fns: dict[str, Callable[[], object]] = {"sgemm 2048^3": sgemm_once}
    fns |= {k: (lambda fn=fn: fn(x)) for k, fn in variants.items()}
    times = interleave(fns, args.rounds)
    sgemm = sgemm_gflops(median(times.pop("sgemm 2048^3")))
    shipped = median(times["paddle+oneDNN, slice shift (shipped)"])
    rows = [[k, median(v) * 1e3, R50_GFLOP / median(v), R50_GFLOP / median(v) / sgemm, shipped / median(v),
             f"{agree.get(k, float('nan')):.1e}"] for k, v in times.items()]
    sections = [f"sgemm (numpy float32 2048^3, median of {args.rounds}, interleaved): **{sgemm:.1f} GFLOP/s**; "
                f"one clip = {R50_GFLOP} GFLOP; batch 1, {args.threads} threads.",
                table(["variant", "ms/clip (median)", "GFLOP/s", "of sgemm", "speed vs shipped",
                       "rel. diff vs shipped"], rows)]
    if args.workers:
        sections.append(workers_section(args.workers))
    return write_report("engine", "Engine: TSM-R50 8x224 batch 1 on the CPU", sections)


if __name__ == "__main__":
    main()
