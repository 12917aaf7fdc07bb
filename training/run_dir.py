"""A training run's output folder: what a fresh run moves aside and what a resumed run keeps.

Checkpoints, the log and the curves of one run belong together: a fresh run into a folder that holds an
earlier one moves all of them into ``earlier_run.<n>/`` (nothing is lost, and ``best.pdparams`` can never be
the earlier run's beside this one's ``latest``); a resumed run keeps them and trims its log to the epoch it
resumes from.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from training.checkpoint import os_error, read_meta, write_atomically

if TYPE_CHECKING:
    from training.config import Config

log = logging.getLogger(__name__)

LOG_FILE = "metrics.jsonl"
RESULT_FILE = "result.json"  # a finished run's TrainResult, written by rank 0
LATEST, BEST = "latest", "best"  # checkpoint stems: the last epoch's (with the optimizer), the best validated one
# What train() writes into its output folder (the rest of a folder is the user's, and stays).
RUN_FILES = (LOG_FILE, RESULT_FILE, "curves.png", "config.json", "confusion_matrix.png", "evaluation.json",
             f"{BEST}.*", f"{LATEST}.*",
             "epoch_*.pdparams", "epoch_*.pdopt", "epoch_*.json")


def require_writable(out: Path) -> None:
    """Before the first epoch: a folder the run cannot write (read-only, another user's) failed only at the first
    checkpoint, an epoch later."""
    probe = out / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
    except OSError as exc:
        raise os_error(exc, f"train.output_dir {out} is not writable ({exc.strerror or exc}): the run could save "
                            "no checkpoint; choose another folder (-o train.output_dir=...)") from exc
    finally:
        probe.unlink(missing_ok=True)


def set_aside_earlier_run(out: Path) -> Path | None:
    """Move the files of an earlier run in ``out`` into the first free ``out/earlier_run.<n>``; returns it
    (None when ``out`` holds no run)."""
    files = sorted({f for pattern in RUN_FILES for f in out.glob(pattern) if f.is_file()})
    if not files:
        return None
    n = 1
    while (out / f"earlier_run.{n}").exists():
        n += 1
    kept = out / f"earlier_run.{n}"
    kept.mkdir()
    for f in files:
        f.rename(kept / f.name)
    log.warning("%s held an earlier run (%d files): moved to %s; resume a run with --resume "
                "<output_dir>/latest.pdparams instead", out, len(files), kept)
    return kept


def trim_log(log_file: Path, resumed_at: int) -> None:
    """Drop the records of epochs after ``resumed_at`` (the resumed run trains them again) and a line torn by
    a kill, so the log and its curves show one history."""
    if not log_file.exists():
        return
    lines = log_file.read_text().splitlines(keepends=True)
    current = [line for line in lines if _epoch_of(line) <= resumed_at]
    if len(current) < len(lines):
        write_atomically(log_file, lambda tmp: tmp.write_text("".join(current)))
        log.info("dropped %d records after epoch %d from %s: the resumed run writes them anew",
                 len(lines) - len(current), resumed_at, log_file.name)


def _epoch_of(line: str) -> float:
    """The epoch a log line belongs to; infinite (so dropped) for a line that is not a whole record."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return float("inf")
    return float(record.get("epoch", 0)) if isinstance(record, dict) else float("inf")


def in_run_folder(cfg: Config, resume: Path | None) -> Config:
    """``cfg`` writing into the folder of the run it resumes (see ``training.loop.train``); unchanged for a fresh
    run."""
    if resume is None:
        return cfg
    folder = resume.parent
    if Path(cfg.train.output_dir).resolve() != folder.resolve():
        log.info("resuming the run in %s (the folder of %s), not train.output_dir %s", folder, resume.name,
                 cfg.train.output_dir)
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"output_dir": str(folder)})})


def _checkpoint_epochs(out: Path) -> dict[str, int]:
    """The run's checkpoints in ``out`` by name stem (``latest``, ``best``, ``epoch_3``) and the epoch each holds."""
    found = [p for pattern in (f"{LATEST}.pdparams", f"{BEST}.pdparams", "epoch_*.pdparams") for p in out.glob(pattern)]
    return {p.stem: int(read_meta(p).get("epoch", 0)) for p in found if p.is_file()}


def set_aside_abandoned_epochs(out: Path, resumed_at: int) -> None:
    """Resuming an older epoch: move the later epochs' checkpoints (and the whole log) into ``earlier_run.<n>``,
    as a fresh run does with its predecessor, so no later epoch stays mixed in with the resumed run's."""
    epochs = _checkpoint_epochs(out)
    later = sorted(stem for stem, epoch in epochs.items() if epoch > resumed_at)
    if not later:
        return
    log.warning("resuming at epoch %d abandons the later epochs of the run in %s: %s", resumed_at, out,
                ", ".join(f"{stem}.pdparams (epoch {epochs[stem]})" for stem in later))
    kept = set_aside_earlier_run(out)
    assert kept is not None  # it held the later checkpoints
    for stem in (stem for stem, epoch in epochs.items() if epoch <= resumed_at):  # the resumed run's own
        for f in kept.glob(f"{stem}.*"):
            f.rename(out / f.name)
    if (kept / LOG_FILE).exists():  # the whole log stays with the abandoned run; trim_log cuts this copy
        shutil.copy2(kept / LOG_FILE, out / LOG_FILE)
