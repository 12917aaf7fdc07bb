"""Shared benchmark helpers: sgemm rate, interleaved timing, R50 exports, test videos, markdown reports.

The machine may be shared, so every figure is a ratio of medians measured in the same run,
interleaved A, B, A, B, ...; absolute numbers are for orientation only.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

CACHE = Path(os.environ.get("TSM_BENCH_CACHE", "/tmp/tsm-bench"))
REPORTS = Path(__file__).parent / "reports"
R50_GFLOP = 65.4
"""Multiply-adds x 2 of one TSM-R50 8x224 clip (8 frames through ResNet-50), GFLOP."""
LOADED_NOTE = ("Absolute numbers depend on what else runs on this shared 2-core machine (see the load average); "
               "only the ratios, measured interleaved in the same run, are meaningful.")


def sgemm_once(n: int = 2048) -> float:
    """Seconds for one float32 ``n x n @ n x n`` numpy matmul (inputs made outside the timing)."""
    a = _sgemm_inputs(n)
    t0 = time.perf_counter()
    np.matmul(a, a)
    return time.perf_counter() - t0


_INPUTS: dict[int, np.ndarray] = {}


def _sgemm_inputs(n: int) -> np.ndarray:
    if n not in _INPUTS:
        _INPUTS[n] = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    return _INPUTS[n]


def sgemm_gflops(seconds: float, n: int = 2048) -> float:
    return 2.0 * n**3 / seconds / 1e9


def interleave(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time each callable ``rounds`` times, round-robin (A, B, C, A, B, C, ...); seconds per call."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of ``values`` (linear interpolation); NaN when empty."""
    return float(np.percentile(values, q)) if values else float("nan")


def table(header: list[str], rows: list[list[object]]) -> str:
    """A markdown table; floats are printed with 3 significant digits."""
    def cell(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(name: str, title: str, sections: list[str]) -> Path:
    """Write ``reports/<name>.md`` (title, machine line, note, sections) and print it."""
    REPORTS.mkdir(parents=True, exist_ok=True)
    head = f"# {title}\n\n{machine_line()}\n\n{LOADED_NOTE}\n"
    text = head + "\n" + "\n\n".join(sections) + "\n"
    path = REPORTS / f"{name}.md"
    path.write_text(text)
    print(text, flush=True)
    return path


def machine_line() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return (f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"load average at report time {load[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M')}.")


def export_r50(tag: str, shift: bool = True, shift_impl: str = "slice", depth: int = 50, crop: int = 224,
               short_side: int = 256, num_classes: int = 400) -> Path:
    """A random-weight TSM export published into ``CACHE/models/<tag>`` (reused when present)."""
    repo = CACHE / "models" / tag
    existing = sorted(repo.glob("r50/[0-9]*"))
    if existing:
        return existing[-1]
    import paddle

    from service.contract.manifest import Manifest, ModelIO, Preprocessing
    from training.export import export_to_repo
    from training.tsm import build_tsm

    paddle.seed(0)
    model = build_tsm(depth, num_classes=num_classes, num_seg=8, shift=shift, shift_impl=shift_impl)  # type: ignore[arg-type]
    spec = Preprocessing(num_seg=8, short_side=short_side, crop_size=crop)
    manifest = Manifest(name="r50", version=1, labels=[f"class_{i}" for i in range(num_classes)],
                        preprocessing=spec, io=ModelIO(input_shape=(-1, 8, 3, crop, crop)), depth=depth,
                        shift=shift)
    return export_to_repo(model, repo, manifest)


def make_clip(path: Path, seconds: float = 10.0, width: int = 1280, height: int = 720, fps: int = 25,
              gop: int = 30, seed: int = 0) -> Path:
    """A cached H.264 (yuv420p) MP4 of moving noise-and-gradient frames, keyframe every ``gop`` frames."""
    if path.is_file() and path.stat().st_size > 0:
        return path
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "preset": "veryfast",
                          "crf": "23"}
        mux_moving_noise(out, stream, int(seconds * fps), seed)
    tmp.rename(path)
    return path


def mux_moving_noise(out: Any, stream: Any, count: int, seed: int = 0) -> None:
    """Encode ``count`` frames of 8-pixel noise blocks sliding diagonally (detail that costs what real footage
    costs to decode) into ``stream`` of the open container ``out``, then flush the encoder."""
    import av

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (stream.height // 8, stream.width // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    for i in range(count):
        frame = np.roll(base, (i * 3, i * 5), axis=(0, 1))
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def clip_set(width: int = 1280, height: int = 720, seconds: float = 10.0) -> dict[str, Path]:
    """The benchmark mix: two clips with a keyframe every 30 frames and two every 250 frames."""
    root = CACHE / "videos"
    clips = {}
    for gop in (30, 250):
        for seed in (1, 2):
            name = f"{height}p_g{gop}_s{seed}"
            clips[name] = make_clip(root / f"{name}.mp4", seconds, width, height, gop=gop, seed=seed)
    return clips
