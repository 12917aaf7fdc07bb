"""A live server whose decoder worker dies while the OS refuses to start another: 503s, not hangs, then recovery."""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path
from typing import Any, NoReturn

import pytest

from service import decode_process
from service.decode_worker import DecodedClip, decode_task
from tests.conftest import LiveServer, pool_healthy
from tests.e2e.test_errors import assert_problem

pytestmark = pytest.mark.slow
MP4 = {"content-type": "video/mp4"}


def crash_on_marker(path: str, *args: Any) -> DecodedClip:
    """The real decode task, unless the upload starts with ``CRASH`` (runs in a decoder worker)."""
    with open(path, "rb") as fh:
        if fh.read(5) == b"CRASH":
            os.kill(os.getpid(), signal.SIGKILL)
    return decode_task(path, *args)


def refused_start(*_: Any, **__: Any) -> NoReturn:
    raise OSError(errno.EMFILE, "Too many open files")


def test_no_decoder_startable_means_503_and_not_ready_until_one_starts(
        tiny_repo_template: Path, videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = {"model_repo": tiny_repo_template, "decode_workers": 1, "poll_interval_s": 0, "cpu_threads": 1,
                 "max_queue_delay_ms": 5}
    good = videos["c"].read_bytes()
    with LiveServer(overrides, decode_task=crash_on_marker) as live, live.client() as http:
        assert http.get("/readyz").status_code == 200
        monkeypatch.setattr(decode_process.CONTEXT, "Process", refused_start)  # the OS refuses new processes
        assert_problem(http.post("/classify", content=b"CRASH" + b"\0" * 100, headers=MP4), 422, "decoder-crashed")
        not_ready = http.get("/readyz")
        assert not_ready.status_code == 503 and not_ready.json()["status"] == "not-ready", not_ready.text
        assert not_ready.json()["models_ready"] == 1 and not_ready.json()["decoders_ready"] == 0
        assert not_ready.json()["detail"] == "no decoder process could be started (the system refused a new process)"
        start = time.monotonic()
        refused = http.post("/classify", content=good, headers=MP4)
        assert time.monotonic() - start < 5  # answered at once, not at the 30 s deadline
        body = assert_problem(refused, 503, "decoder-unavailable")
        assert refused.headers["retry-after"] and "decoder" in body["detail"]
        monkeypatch.undo()
        deadline = time.monotonic() + 15
        while http.get("/readyz").status_code != 200:  # the pool retries on its own; only probes come in
            assert time.monotonic() < deadline, "the pool did not recover once processes could start again"
            time.sleep(0.2)
        assert pool_healthy(live)
        ok = http.post("/classify", content=good, headers=MP4)
        assert ok.status_code == 200, ok.text
        metrics = http.get("/metrics").text
    assert 'tsm_rejected_requests_total{reason="decoder-unavailable"} 1.0' in metrics
    assert 'tsm_decoder_replacements_total{reason="crashed"} 1.0' in metrics  # counted once, when it succeeded


def test_a_decoder_killed_while_idle_takes_the_replica_out_until_one_starts(
        tiny_repo_template: Path, videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """No request is needed to notice it: /readyz answers 503 while the OS refuses its replacement."""
    overrides = {"model_repo": tiny_repo_template, "decode_workers": 1, "poll_interval_s": 0, "cpu_threads": 1,
                 "max_queue_delay_ms": 5}
    with LiveServer(overrides) as live, live.client() as http:
        assert http.get("/readyz").status_code == 200
        monkeypatch.setattr(decode_process.CONTEXT, "Process", refused_start)
        os.kill(live.resources.pool.pids()[0], signal.SIGKILL)  # idle: no request is running
        deadline = time.monotonic() + 15
        while (probe := http.get("/readyz")).status_code == 200:
            assert time.monotonic() < deadline, "/readyz kept counting a dead decoder as ready"
            time.sleep(0.1)
        assert probe.status_code == 503 and probe.json()["decoders_ready"] == 0, probe.text
        monkeypatch.undo()
        while http.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline + 15, "the pool did not recover once processes could start again"
            time.sleep(0.2)
        assert pool_healthy(live)
        ok = http.post("/classify", content=videos["c"].read_bytes(), headers=MP4)
        assert ok.status_code == 200, ok.text
        assert 'tsm_decoder_replacements_total{reason="crashed"} 1.0' in http.get("/metrics").text
