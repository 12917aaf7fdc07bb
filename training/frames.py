"""Videos -> PaddleVideo frame folders: every frame decoded once, scaled, stored as ``img_00001.jpg``...

PaddleVideo trains Kinetics from extracted frames for speed; this does the same for any video list.
Training then reads a few small JPEGs per clip instead of decoding the whole video every epoch. The
frames go through the service's decoder and the test pipeline's ``Scale``, so test-time preprocessing of
a folder (Scale is then a no-op, CentreCrop) gives the served tensor up to JPEG rounding.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from service.contract.preprocess import scale
from service.decode_errors import DecodeError, reason_only, require_file
from service.decoding import read_frames, read_frames_decord
from training.listfile import parse_list
from training.pool import run_tasks

log = logging.getLogger(__name__)

JPEG_QUALITY = 95  # with 4:4:4 chroma: small frames keep their edges and colours


@dataclass(frozen=True)
class _Job:
    video: Path
    folder: Path
    short_side: int | None


def decoded_chunks(video: Path, chunk: int = 128) -> Iterator[np.ndarray]:
    """Every frame of ``video``, uint8 [<= chunk, H, W, 3] at a time (about 800 MB at 1080p), so a long video never
    sits in memory whole.
    decord decodes a whole stream about twice as fast as the service's sparse reader, with the same pixels
    (tests/integration/test_sparse_decode.py); a file decord can't read goes to the service's reader, whole."""
    try:
        frames, info, _ = read_frames_decord(video, lambda count: range(min(count, chunk)))
    except DecodeError:
        yield read_frames(video, lambda count: range(count))[0]
        return
    yield frames
    for start in range(chunk, info.num_frames, chunk):
        yield read_frames_decord(video, lambda count, s=start: range(s, min(count, s + chunk)))[0]


def _extract(job: _Job) -> tuple[int, str]:
    """Write one video's frames; (frame count, error text; empty if it worked)."""
    count = 0
    try:
        require_file(job.video)  # else decord's and PyAV's errors call a missing file undecodable
        for frames in decoded_chunks(job.video):
            job.folder.mkdir(parents=True, exist_ok=True)
            for rgb in frames:
                img = Image.fromarray(rgb)
                if job.short_side:
                    img = scale(img, job.short_side)
                count += 1
                img.save(job.folder / f"img_{count:05d}.jpg", quality=JPEG_QUALITY, subsampling=0)
    except Exception as exc:  # one video's failure, whatever it is (PyAV's MemoryError for a corrupt file), is its own
        return 0, reason_only(exc, job.video)  # the report names the video
    return count, ""


def _folder_name(video: Path, data_prefix: str, suffix: str, index: int) -> str:
    """The video's path as its list gives it: under ``data_prefix``, without the ``suffix`` appended to the list's
    paths. So are PaddleVideo's frame folders named: Kinetics' ``abseiling/x.mp4`` keeps its ``.mp4``, UCF-101's
    ``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01`` is listed without the ``.avi``. ``<index>_<name>`` for a video
    outside the prefix."""
    try:
        rel = video.relative_to(data_prefix) if data_prefix else video
    except ValueError:
        rel = video
    listed = str(rel).removesuffix(suffix)
    if rel.is_absolute() or ".." in rel.parts:
        return f"{index:06d}_{Path(listed).name}"
    return listed


def extract_frames(video_list: Path, out_dir: Path, data_prefix: str = "", short_side: int | None = None,
                   workers: int = 2, suffix: str = "") -> Path:
    """Decode every video of ``video_list`` (``<path> <label>``, ``suffix`` appended to each path as
    ``data.suffix`` is) into ``out_dir/<path as listed>/``, scaled to ``short_side`` (None: native size), and write
    ``out_dir/<list name>`` as a frames list (``<dir> <num_frames> <label>``, dirs relative to ``out_dir``);
    returns that list.

    A video that can't be decoded is logged by path and left out of the list, and the extraction is then not
    marked complete, so a rerun tries again. A complete earlier extraction of the same list at the same size is
    reused as is. Raises ``ValueError`` if no video could be decoded at all.
    """
    out_dir = Path(out_dir)
    samples = parse_list(Path(video_list), "videos", data_prefix, suffix)
    stamp = {"list_sha256": hashlib.sha256(Path(video_list).read_bytes()).hexdigest(), "data_prefix": data_prefix,
             "suffix": suffix, "short_side": short_side, "jpeg_quality": JPEG_QUALITY}
    out_list = out_dir / Path(video_list).name
    if out_list.resolve() == Path(video_list).resolve():
        raise ValueError(f"the frames list would overwrite the video list {video_list}: choose another output folder")
    done = out_list.with_suffix(out_list.suffix + ".json")
    if out_list.is_file() and done.is_file() and json.loads(done.read_text()) == stamp:
        return out_list
    done.unlink(missing_ok=True)
    rel_dirs = [_folder_name(s.path, data_prefix, suffix, i) for i, s in enumerate(samples)]
    unique = {rel: _Job(s.path, out_dir / rel, short_side) for s, rel in zip(samples, rel_dirs, strict=True)}
    clash = next((job.folder for job in unique.values() if job.folder.is_file()), None)
    if clash is not None:  # out_dir is the videos' own folder: a frame folder would take a video's name
        raise ValueError(f"the frame folder {clash} would replace the video of that name: choose another output "
                         "folder")
    extracted = dict(zip(unique, run_tasks(_extract, list(unique.values()), workers,
                                           desc=f"frames of {Path(video_list).name}", unit="video"), strict=True))
    lines = []
    for sample, rel in zip(samples, rel_dirs, strict=True):
        count, error = extracted[rel]
        if error:
            log.warning("skipped video %s: %s", sample.path, error)
            continue
        lines.append(f"{rel} {count} {sample.label}\n")
    if not lines:
        out_list.unlink(missing_ok=True)  # an earlier list would now describe half-rewritten folders
        raise ValueError(_nothing_extracted(Path(video_list), len(samples), data_prefix))
    out_dir.mkdir(parents=True, exist_ok=True)
    out_list.write_text("".join(lines))
    skipped = len(samples) - len(lines)
    if skipped:  # no stamp: a rerun (with the files fixed) extracts again instead of reusing this list
        log.warning("%d of %d videos of %s were skipped: %s is not marked complete", skipped, len(samples),
                    video_list, out_list)
    else:
        done.write_text(json.dumps(stamp, indent=1))  # last: marks the extraction complete
    return out_list


def _nothing_extracted(video_list: Path, count: int, data_prefix: str) -> str:
    """The error for a list none of whose videos decoded; most often its paths are read from the wrong folder."""
    where = f"under --prefix {data_prefix}" if data_prefix else f"relative to the current folder {Path.cwd()}"
    return (f"none of the {count} videos of {video_list} could be read (each is logged above): its paths are "
            f"read {where}")
