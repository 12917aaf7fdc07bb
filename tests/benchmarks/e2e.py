"""End to end: the service vs PaddleVideo-style ``tools/predict.py`` on 10 s 720p H.264 clips.

Baseline (this process): per video, decord ``read_clip`` + ``preprocess_clip`` + Paddle
Inference on the FUSED-shift export, one video at a time. Service: ``python -m service.cli`` on
loopback with the shipped slice export, closed-loop clients at concurrency 1, 2, 4, 8. Baseline
blocks and service blocks alternate. Also: decord vs PyAV decode time per clip and whether their
pixels are identical, for keyframes every 30 and every 250 frames.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from service.contract.manifest import Manifest
from service.contract.preprocess import preprocess_clip
from service.contract.sampling import test_indices
from service.decoding import read_clip, read_frames_decord, read_frames_pyav
from service.settings import ServiceSettings
from service.sparse_decode import read_frames_sparse
from tests.benchmarks.common import clip_set, export_r50, interleave, median, pct, table, write_report
from tests.benchmarks.engine import paddle_runner
from tests.benchmarks.server import Server, closed_loop, serve


def decode_section(clips: dict[str, Path], rounds: int, num_seg: int = 8) -> str:
    """decord vs PyAV decoding every frame vs the service's sparse decoding: interleaved medians, pixel differences."""
    rows = []
    for name, path in clips.items():
        def pick(count: int) -> list[int]:
            return test_indices(count, num_seg, "paddlevideo_test")
        ref, _, _ = read_frames_decord(path, pick)
        fns = {"decord": lambda p=path: read_frames_decord(p, pick), "pyav": lambda p=path: read_frames_pyav(p, pick),
               "sparse": lambda p=path: read_frames_sparse(p, pick)}
        times = interleave(fns, rounds, warmup=0)
        diffs = [int(np.abs(ref.astype(np.int16) - other.astype(np.int16)).max())
                 for other in (read_frames_pyav(path, pick)[0], read_frames_sparse(path, pick)[0])]
        d, p, k = (median(times[n]) for n in ("decord", "pyav", "sparse"))
        best = min(("decord", d), ("pyav", p), ("sparse", k), key=lambda t: t[1])[0]
        rows.append([name, d * 1e3, p * 1e3, k * 1e3, p / d, k / d, best, f"{diffs[0]} / {diffs[1]}"])
    header = ["clip", "decord ms", "PyAV all frames ms", "sparse (shipped) ms", "PyAV/decord", "sparse/decord",
              "fastest", "max |diff| vs decord (PyAV / sparse)"]
    return ("## Decode: 8 test-time frames of one clip (decord and sparse on 1 thread, as the service runs them; "
            "PyAV's full decode, the fallback, with FFmpeg's default threads)\n\n" + table(header, rows))


class Baseline:
    """PaddleVideo ``tools/predict.py`` done straight: decode, preprocess, fused-shift predictor, one by one."""

    def __init__(self, folder: Path, threads: int) -> None:
        self.spec = Manifest.read(folder).preprocessing
        self.run = paddle_runner(folder, threads)

    def video(self, path: Path) -> float:
        t0 = time.perf_counter()
        frames, _, _ = read_clip(path, self.spec)
        self.run(preprocess_clip(frames, self.spec)[np.newaxis])
        return time.perf_counter() - t0


class RssSampler:
    """Samples a server's RSS (MiB: total, server process, decode workers) every ``period_s`` in a thread."""

    def __init__(self, server: Server, period_s: float = 0.5) -> None:
        self.server, self.period_s = server, period_s
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            sizes = self.server.rss_by_process()
            if sizes:
                self.samples.append((sum(sizes), sizes[0], sum(sizes[1:])))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, part: int = 0) -> float:
        """Largest sample of ``part``: 0 total, 1 the server process, 2 the decode workers together."""
        return max((s[part] for s in self.samples), default=float("nan"))


def served_backend(url: str) -> str:
    """The backend ``backend=auto`` chose for the ready version, from ``GET /models``."""
    models = httpx.get(url + "/models", timeout=10).json()["models"]
    return ", ".join(m["backend"] for m in models if m["state"] == "ready" and m["backend"]) or "unknown"


def load_section(files: list[Path], levels: list[int], per_client: int, threads: int,
                 decode_workers: int, max_batch_size: int) -> str:
    base = Baseline(export_r50("fused", shift_impl="fused"), threads)
    base.video(files[0])  # warm-up
    repo = export_r50("slice").parents[1]
    base_times: list[float] = []
    rows = []
    with serve(repo, cpu_threads=threads, decode_workers=decode_workers, max_batch_size=max_batch_size,
               max_queue_delay_ms=10, request_deadline_ms=600_000, decode_queue_capacity=64) as server:
        closed_loop(server.url, files[:1], 1, 1)  # warm-up
        backend = served_backend(server.url)
        with RssSampler(server) as rss:
            for c in levels:
                base_times += [base.video(f) for f in files]
                res = closed_loop(server.url, files, c, max(len(files), per_client * c))
                rows.append(res)
            base_times += [base.video(f) for f in files]
    base_per_video = median(base_times)
    base_tput = len(base_times) / sum(base_times)
    best = max(rows, key=lambda r: r.throughput)
    c1 = next((r for r in rows if r.concurrency == 1), rows[0])
    tput_ratio, lat_ratio = best.throughput / base_tput, median(c1.latencies) / base_per_video
    summary = (f"Baseline (fused export, decord, one at a time): median {base_per_video * 1e3:.0f} ms/video, "
               f"{base_tput:.3f} clips/s over {len(base_times)} videos.\n\n"
               f"**Saturation throughput ratio service/baseline: {tput_ratio:.2f}x** (c={best.concurrency}, "
               f"target >= 1.5x). **p50 latency at c=1 / baseline per video: {lat_ratio:.2f}** "
               f"(target <= 1.1). Peak summed RSS of server + decode workers during the load: "
               f"**{rss.peak():.0f} MiB** (server process {rss.peak(1):.0f}, decode workers {rss.peak(2):.0f}). "
               f"Backend chosen by `backend=auto` at load: **{backend}**.")
    header = ["concurrency", "requests", "clips/s", "vs baseline", "p50 ms", "p90 ms", "p99 ms"]
    body = [[r.concurrency, len(r.latencies), r.throughput, r.throughput / base_tput, pct(r.latencies, 50) * 1e3,
             pct(r.latencies, 90) * 1e3, pct(r.latencies, 99) * 1e3] for r in rows]
    return "## Load (R50 8x224, random weights)\n\n" + summary + "\n\n" + table(header, body)


def main(argv: list[str] | None = None) -> Path:
    default_batch = ServiceSettings().max_batch_size
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--levels", default="1,2,4,8", help="client concurrencies, comma-separated")
    ap.add_argument("--per-client", type=int, default=3, help="requests per client at each level")
    ap.add_argument("--decode-rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode-workers", type=int, default=2)
    ap.add_argument("--max-batch-size", type=int, default=default_batch,
                    help="default: the service's own default")
    ap.add_argument("--skip-decode", action="store_true")
    args = ap.parse_args(argv)
    clips = clip_set()
    sections = [] if args.skip_decode else [decode_section(clips, args.decode_rounds)]
    levels = [int(c) for c in args.levels.split(",")]
    sections.append(load_section(list(clips.values()), levels, args.per_client, args.threads, args.decode_workers,
                                    args.max_batch_size))
    sections.append(f"Settings: cpu_threads={args.threads}, decode_workers={args.decode_workers}, "
                    f"max_batch_size={args.max_batch_size}, "
                    "max_queue_delay_ms=10; clips: 10 s 1280x720 25 fps H.264 yuv420p, 2 with a keyframe every 30 "
                    "frames, 2 every 250.")
    name = "e2e" + (f"_batch{args.max_batch_size}" if args.max_batch_size != default_batch else "") + (
        f"_decoders{args.decode_workers}" if args.decode_workers != 2 else "")
    return write_report(name, "End to end: service vs PaddleVideo-style predict", sections)


if __name__ == "__main__":
    main()
