"""Decoding one clip's 8 test-time frames from the containers that used to get a full decode: AVI, ASF, FLV.

For each file: ``read_frames`` as the service runs it (intra-only packets, forward sparse reading, or the full decode
where nothing else is exact) against ``read_frames_pyav`` decoding every frame (what these files all took before),
interleaved medians, and whether the frames are identical.

    python -m tests.benchmarks.containers [--seconds 60] [--rounds 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import av
import numpy as np

from service.contract.sampling import test_indices
from service.decoding import read_frames, read_frames_pyav
from tests.benchmarks.common import CACHE, interleave, median, mux_moving_noise, table, write_report

# name: (codec, container, pixel format, encoder options)
FILES: dict[str, tuple[str, str, str, dict[str, str]]] = {
    "MJPEG in AVI (a camera's)": ("mjpeg", "avi", "yuvj420p", {}),
    "MPEG-4 Simple Profile in AVI (DivX/Xvid)": ("mpeg4", "avi", "yuv420p", {"g": "250"}),
    "H.264 Baseline in AVI (an IP camera's)": ("libx264", "avi", "yuv420p", {"profile": "baseline", "g": "250"}),
    "H.264 High with B-frames in AVI": ("libx264", "avi", "yuv420p", {"bf": "3", "g": "250"}),
    "H.264 High with B-frames in FLV (RTMP)": ("libx264", "flv", "yuv420p", {"bf": "3", "g": "250"}),
    "MPEG-4 Simple Profile in ASF": ("mpeg4", "asf", "yuv420p", {"g": "250"}),
}


def make(path: Path, codec: str, fmt: str, pix_fmt: str, options: dict[str, str], seconds: float,
         fps: int = 25, width: int = 640, height: int = 480) -> Path:
    """Moving blocks of noise (cached): enough detail that decoding costs what real footage costs."""
    if path.is_file() and path.stat().st_size > 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.stem + ".part" + path.suffix)
    with av.open(str(part), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = {**({"preset": "veryfast"} if codec == "libx264" else {}), **options}
        mux_moving_noise(out, stream, int(seconds * fps))
    part.rename(path)
    return path


def main(argv: list[str]) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each file")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    rows = []
    for name, (codec, fmt, pix_fmt, options) in FILES.items():
        slug = f"{codec}_{fmt}_{'_'.join(f'{k}{v}' for k, v in options.items())}_{args.seconds:g}s"
        path = make(CACHE / "containers" / f"{slug}.{fmt}", codec, fmt, pix_fmt, options, args.seconds)

        def pick(count: int) -> list[int]:
            return test_indices(count, 8, "paddlevideo_test")
        frames, info, _ = read_frames(path, pick)
        identical = np.array_equal(frames, read_frames_pyav(path, pick)[0])
        times = interleave({"shipped": lambda p=path: read_frames(p, pick),
                            "full": lambda p=path: read_frames_pyav(p, pick)}, args.rounds)
        shipped, full = median(times["shipped"]), median(times["full"])
        rows.append([name, info.backend, shipped * 1e3, full * 1e3, shipped / full, "yes" if identical else "NO"])
    header = ["file (640x480, 25 fps)", "decoder now", "now ms", "full PyAV decode ms (before)", "now/before",
              "frames identical"]
    section = (f"## {args.seconds:g} s files, 8 test-time frames, {args.rounds} interleaved rounds (medians)\n\n"
               + table(header, rows))
    return write_report("containers", "Decoding AVI, ASF and FLV: the paths that replaced the full decode", [section])


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
