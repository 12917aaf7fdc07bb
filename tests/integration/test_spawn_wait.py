"""training.parallel.spawn_and_wait: real spawned ranks that finish, fail, or finish and then never exit."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from training.parallel import spawn_and_wait


def _finish_then_hang(folder: str) -> None:
    """Do the work (a file per rank), then keep the process from exiting: the interpreter waits at shutdown
    for a non-daemon thread, as the stuck rank once waited on a lock."""
    Path(folder, f"rank{os.environ['PADDLE_TRAINER_ID']}").touch()
    threading.Thread(target=time.sleep, args=(3600,), name="never-ends").start()


def _finish(folder: str) -> None:
    Path(folder, f"rank{os.environ['PADDLE_TRAINER_ID']}").touch()


def _fail_on_rank_one(folder: str) -> None:
    if os.environ["PADDLE_TRAINER_ID"] == "1":
        raise ValueError("rank one's own error")
    # The other rank never ends by itself, nor on SIGTERM, as a rank caught by Paddle's SIGTERM handler while
    # freeing memory at exit (it deadlocks on the allocator's lock): it must be killed, not asked to stop.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(3600)


@pytest.mark.timeout(240)
def test_ranks_that_finished_but_do_not_exit_are_ended(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="training.parallel")
    started = time.monotonic()
    spawn_and_wait(_finish_then_hang, (str(tmp_path),), nprocs=2, exit_grace_s=2)
    assert time.monotonic() - started < 120
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0", "rank1"]
    ended = [r.getMessage() for r in caplog.records if "has not exited; ending it" in r.getMessage()]
    assert sorted(m.split()[2] for m in ended) == ["0", "1"], ended


@pytest.mark.timeout(240)
def test_ranks_that_exit_are_waited_for_and_never_ended(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="training.parallel")
    spawn_and_wait(_finish, (str(tmp_path),), nprocs=2, exit_grace_s=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0", "rank1"]
    assert "ending it" not in caplog.text


@pytest.mark.timeout(240)
def test_a_failed_rank_raises_its_error_and_ends_the_others(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"(?s)training rank 1 failed:.*ValueError: rank one's own error"):
        spawn_and_wait(_fail_on_rank_one, (str(tmp_path),), nprocs=2, exit_grace_s=3600)
    assert time.monotonic() - started < 120  # the peer's 10 s grace, then SIGKILL
