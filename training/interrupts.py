"""A training run stopped by Ctrl+C, SIGTERM or a data-loading worker's death: what it says, and the checkpoint it
can resume from."""

from __future__ import annotations

import json
import re
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class Terminated(KeyboardInterrupt):
    """What a SIGTERM handler raises (the CLI installs one) so a terminated run ends as an interrupted one."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl+C or SIGTERM stopped a run: the epoch it was in and the checkpoint it can resume from.

    A KeyboardInterrupt still, so callers that know nothing of it stop as they did."""

    def __init__(self, epoch: int, saved: Path | None, saved_epoch: int, signum: int) -> None:
        super().__init__(f"interrupted during epoch {epoch}")
        self.epoch, self.saved, self.saved_epoch, self.signum = epoch, saved, saved_epoch, signum


class DataLoaderDiedError(RuntimeError):
    """A DataLoader worker process died (the OOM killer, a decoder's segfault): Paddle's error, a 30-60 line
    traceback, named neither the likely cause nor the checkpoint to resume from."""

    def __init__(self, epoch: int, saved: Path | None, saved_epoch: int, reason: str) -> None:
        super().__init__(f"a data-loading worker died during epoch {epoch}: {reason}")
        self.epoch, self.saved, self.saved_epoch, self.reason = epoch, saved, saved_epoch, reason


def loader_death(exc: BaseException) -> str | None:
    """What Paddle's error says when its DataLoader lost a worker, else None. Which of two errors comes depends on
    the moment of the death: the watcher's, naming the process and the signal, or the closed queue's."""
    if not isinstance(exc, SystemError):
        return None
    text = str(exc)
    if found := re.search(r"DataLoader process \(pid \d+\) exited[^(\n]*", text):
        return found.group(0).strip()
    if "Blocking queue is killed" in text:  # also a worker's own exception, printed above it: not always a death
        return "Paddle closed the loader's queue: a worker died, or raised the error printed above"
    return None


@dataclass
class Progress:
    """The last checkpoint a run can resume from (None: none yet) and its epoch; rank 0 keeps it current.

    ``latest``: the run's own ``latest.pdparams``, once earlier runs' files are set aside. A signal can land
    between its save and the update of ``saved``: what its ``.json`` (written last) says then counts too."""

    saved: Path | None
    saved_epoch: int
    latest: Path | None = None

    def interrupted(self, exc: KeyboardInterrupt) -> TrainingInterrupted:
        signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
        saved, epoch = self._last_saved()
        return TrainingInterrupted(epoch + 1, saved, epoch, signum)

    def loader_died(self, reason: str) -> DataLoaderDiedError:
        saved, epoch = self._last_saved()
        return DataLoaderDiedError(epoch + 1, saved, epoch, reason)

    def _last_saved(self) -> tuple[Path | None, int]:
        if self.latest is not None and (on_disk := _epoch_of(self.latest)) > self.saved_epoch:
            return self.latest, on_disk
        return self.saved, self.saved_epoch


def _epoch_of(checkpoint: Path) -> int:
    """The epoch a checkpoint's ``.json`` records, 0 when there is none (or it can't be read). Not
    ``checkpoint.read_meta``: that module imports Paddle, which this one must not, and it raises on a junk file,
    which here would turn an interrupt's message into a traceback."""
    try:
        return int(json.loads(checkpoint.with_suffix(".json").read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


@contextmanager
def on_sigterm(handler: Callable[[int], None]) -> Iterator[None]:
    """While inside, SIGTERM calls ``handler(signum)``, which raises to end the work in hand. Set after Paddle is
    imported: Paddle installs a C++ handler at import, which prints a "FatalError" traceback (or exits 143
    silently). That handler is invisible to Python (reported as None) and cannot be put back, so the default
    follows. Only the main thread can set handlers: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: handler(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
