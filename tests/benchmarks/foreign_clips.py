"""A published motion model on clips drawn by ffmpeg alone (``tests/benchmarks/ffmpeg_clips.py``), through the
service's own decoding, preprocessing and Paddle Inference predictor: top-1 with the manifest's test-time crops
and with the centre crop alone, with the object anywhere in the frame and kept in the centre square.

    python -m tests.benchmarks.foreign_clips                      # the highest version of model_repo/tsm-motion
    python -m tests.benchmarks.foreign_clips --model model_repo/tsm-motion/3 --per-class 50

Needs the ffmpeg command-line tool (``apt-get install ffmpeg``), which the project itself does not.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from service.contract.manifest import Manifest, list_versions
from service.contract.preprocess import preprocess_clip
from service.decoding import read_clip
from tests.benchmarks.common import table, write_report
from tests.benchmarks.ffmpeg_clips import CLASSES, make_clips


def _top1(version_dir: Path, clips: list[tuple[Path, int]]) -> tuple[float, float]:
    """(top-1 with the manifest's crops, top-1 with the centre crop alone) over ``clips``."""
    from service.predictor import Predictor, PredictorOptions

    manifest = Manifest.read(version_dir)
    spec = manifest.preprocessing
    centre = spec.model_copy(update={"spatial_crops": 1})
    predictor = Predictor(version_dir, manifest, PredictorOptions(cpu_threads=2))
    hits = np.zeros(2)
    for path, label in clips:
        frames, _, _ = read_clip(path, spec)
        # The centre crop alone: as many copies of it as the model takes crops, whose mean is its own logits.
        one = np.tile(preprocess_clip(frames, centre), (spec.spatial_crops, 1, 1, 1))
        logits = predictor.run(np.stack([preprocess_clip(frames, spec), one]))
        hits += np.argmax(logits, axis=1) == label
    return float(hits[0] / len(clips)), float(hits[1] / len(clips))


def _latest(repo: Path, name: str) -> Path:
    versions = list_versions(repo / name)
    if not versions:
        raise SystemExit(f"no published version of {name} in {repo}: run `python -m training demo` first")
    return repo / name / str(versions[-1])


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="a version folder (default: the highest of model_repo/tsm-motion)")
    ap.add_argument("--per-class", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=Path("runs/foreign_clips"))
    args = ap.parse_args(argv)
    version_dir = args.model or _latest(Path("model_repo"), "tsm-motion")
    manifest = Manifest.read(version_dir)
    if tuple(manifest.labels) != CLASSES:
        raise SystemExit(f"{version_dir} is not a motion model: its labels are {manifest.labels[:3]}...")
    rows = []
    for centred in (False, True):
        t0 = time.perf_counter()
        where = "centred" if centred else "anywhere"
        clips = make_clips(args.workdir / f"seed{args.seed}_{where}", args.per_class, args.seed, centred)
        made = time.perf_counter()
        crops, centre_only = _top1(version_dir, clips)
        rows.append([f"object {'in the centre square' if centred else 'anywhere in the frame'}", len(clips),
                     f"{100 * crops:.1f} %", f"{100 * centre_only:.1f} %", f"{made - t0:.0f} s",
                     f"{time.perf_counter() - made:.0f} s"])
    crops_name = f"{manifest.preprocessing.spatial_crops} crop(s) (manifest)"
    return write_report("foreign_clips", "A motion model on clips drawn by ffmpeg", [
        f"Model `{version_dir}` ({manifest.backbone}, {manifest.preprocessing.num_seg} segments, crop "
        f"{manifest.preprocessing.crop_size}); {args.per_class} clips a class, seed {args.seed}.",
        table(["clips", "count", f"top-1, {crops_name}", "top-1, centre crop", "making", "scoring"], rows)])


if __name__ == "__main__":
    main()
