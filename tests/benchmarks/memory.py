"""Memory: summed RSS of the service (server + decode workers) at saturation, and its growth.

1. R50 8x224 (shipped slice export) at concurrency 8 on the 720p mix: peak summed RSS (< 2.5 GiB),
   for several ``max_batch_size`` (the batch is what sizes Paddle's activation memory).
2. Growth: ``--requests`` (default 1,000) requests of small 224p clips at concurrency 4, RSS
   sampled after every request batch; the slope of a least-squares line through the samples
   after warm-up, MiB per 1,000 requests. ``--growth-model tiny`` (default, fast) or ``r50``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from tests.benchmarks.common import CACHE, clip_set, export_r50, make_clip, table, write_report
from tests.benchmarks.e2e import RssSampler
from tests.benchmarks.server import closed_loop, serve

LIMIT_MIB = 2.5 * 1024


def tiny_repo() -> Path:
    """The test suite's tiny model (R18, width 8, crop 112), exported once into the cache."""
    repo = CACHE / "models" / "tiny"
    if not any(repo.glob("tiny/[0-9]*")):
        from tests.conftest import export_tiny

        tmp = Path(tempfile.mkdtemp(dir=CACHE))
        export_tiny(tmp)
        shutil.rmtree(repo, ignore_errors=True)
        tmp.rename(repo)
    return repo


def saturation(requests: int, max_batch_size: int) -> list[object]:
    """One table row: R50 at concurrency 8 on the 720p mix with ``max_batch_size``; RSS peaks in MiB."""
    files = list(clip_set().values())
    with serve(export_r50("slice").parents[1], cpu_threads=2, decode_workers=2, max_batch_size=max_batch_size,
               request_deadline_ms=600_000, decode_queue_capacity=64) as server, RssSampler(server, 0.25) as rss:
        result = closed_loop(server.url, files, 8, requests)
    peak = rss.peak()
    return [max_batch_size, result.throughput, peak, rss.peak(1), rss.peak(2), "yes" if peak < LIMIT_MIB else "NO"]


def growth(model: str, requests: int, step: int) -> tuple[list[int], list[float]]:
    """(request counts, summed RSS MiB after each) for ``requests`` 224p requests at concurrency 4."""
    files = [make_clip(CACHE / "videos" / f"224p_g{g}.mp4", 4.0, 400, 224, gop=g, seed=g) for g in (30, 250)]
    repo = export_r50("slice").parents[1] if model == "r50" else tiny_repo()
    counts, rss = [], []
    # Batches of up to 8 are the worst case for Paddle's activation memory, so a leak shows most there.
    with serve(repo, cpu_threads=2, decode_workers=2, max_batch_size=8, request_deadline_ms=600_000) as server:
        closed_loop(server.url, files, 4, 8)  # warm-up
        done = 0
        while done < requests:
            closed_loop(server.url, files, 4, step)
            done += step
            counts.append(done)
            rss.append(server.rss_mb())
    return counts, rss


def slope_per_1000(counts: list[int], rss: list[float], skip_fraction: float = 0.2) -> float:
    """Least-squares slope of RSS vs requests after the first ``skip_fraction``, MiB per 1,000 requests."""
    start = int(len(counts) * skip_fraction)
    x, y = np.asarray(counts[start:], float), np.asarray(rss[start:], float)
    if len(x) < 2:
        return float("nan")
    return float(np.polyfit(x, y, 1)[0] * 1000)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--saturation-requests", type=int, default=16)
    ap.add_argument("--batch-sizes", default="8,2,1", help="max_batch_size values for the saturation runs")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--step", type=int, default=50)
    ap.add_argument("--growth-model", choices=["tiny", "r50"], default="tiny")
    args = ap.parse_args(argv)
    sat_rows = [saturation(args.saturation_requests, int(b)) for b in args.batch_sizes.split(",")]
    counts, rss = growth(args.growth_model, args.requests, args.step)
    slope = slope_per_1000(counts, rss)
    sat = (f"## Saturation (R50 8x224, concurrency 8, {args.saturation_requests} requests of 720p clips)\n\n"
           + table(["max_batch_size", "clips/s", "peak total RSS MiB", "server MiB", "decode workers MiB",
                    f"< {LIMIT_MIB:.0f} MiB"], sat_rows))
    samples = table(["requests", "summed RSS MiB"], [[c, r] for c, r in zip(counts, rss, strict=True)][:: max(
        1, len(counts) // 10)])
    grow = (f"## Growth ({args.growth_model} model, {args.requests} requests of 4 s 400x224 clips, concurrency 4)\n\n"
            f"RSS first sample {rss[0]:.0f} MiB, last {rss[-1]:.0f} MiB; **slope after warm-up "
            f"{slope:+.1f} MiB per 1,000 requests**.\n\n" + samples)
    return write_report("memory", "Memory: whole service RSS", [sat, grow])


if __name__ == "__main__":
    main()
