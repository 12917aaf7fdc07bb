"""SIGTERM: in-flight requests finish within the grace period, those cut off by it get a 503 problem."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.helpers import metric, wait_until

pytestmark = pytest.mark.slow
MP4 = {"content-type": "video/mp4"}


@contextmanager
def _serve_held_in_batcher(repo: Path, delay_ms: int, grace_s: float,
                           tmp: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A ``tsm-serve`` process whose requests wait ``delay_ms`` in the batcher, ready to serve, its temporary files
    in ``tmp``; killed on the way out if it is still running."""
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp), "TSM_MODEL_REPO": str(repo), "TSM_PORT": str(port),
           "TSM_MAX_QUEUE_DELAY_MS": str(delay_ms), "TSM_MAX_BATCH_SIZE": "8", "TSM_DECODE_WORKERS": "1",
           "TSM_POLL_INTERVAL_S": "0", "TSM_CPU_THREADS": "1", "TSM_SHUTDOWN_GRACE_S": str(grace_s),
           "TSM_LOG_FORMAT": "text"}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli"], env=env, cwd=Path(__file__).parents[2],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _exit_log(proc: subprocess.Popen[bytes]) -> str:
    """The stderr of a server told to stop by SIGTERM, once it has exited with the status a shell reports for it
    (uvicorn re-raises the signal after its graceful shutdown; the process no longer dies of it)."""
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    _, stderr = proc.communicate(timeout=5)
    return stderr.decode()


def test_sigterm_finishes_in_flight_then_exits(tiny_repo_template: Path, videos: dict[str, Path],
                                              tmp_path: Path) -> None:
    """SIGTERM: the listener closes, the in-flight request (held 4 s in the batcher) still gets 200, exit 143, and
    nothing is left in the temporary folder (dying of the re-raised signal left multiprocessing's pymp-* folder at
    every stop)."""
    # A 4 s batching window: the signal, and the listener closing, come well before it ends, on any machine.
    with _serve_held_in_batcher(tiny_repo_template, 4000, 20, tmp_path) as (proc, url):
        result: dict[str, Any] = {}

        def in_flight() -> None:
            with httpx.Client(base_url=url, timeout=30) as http:
                result["response"] = http.post("/classify", content=videos["c"].read_bytes(), headers=MP4)

        thread = threading.Thread(target=in_flight)
        thread.start()
        # Decoded, now waiting in the batcher's window.
        wait_until(lambda: metric(httpx.get(f"{url}/metrics", timeout=5).text,
                                  'tsm_queue_depth{model="tiny"}') == 1.0, 30)
        proc.send_signal(signal.SIGTERM)
        refused_at = time.monotonic() + 5
        while True:  # until it no longer accepts, the in-flight request still unanswered meanwhile
            assert thread.is_alive(), "the in-flight request was answered before the listener closed"
            try:
                httpx.get(f"{url}/healthz", timeout=1)
            except httpx.TransportError:
                break
            assert time.monotonic() < refused_at, "the server still accepts connections 5 s after SIGTERM"
            time.sleep(0.05)
        thread.join(timeout=30)
        log = _exit_log(proc)
    assert result["response"].status_code == 200, result["response"].text
    assert "Application shutdown complete" in log and "unloaded tiny version 1" in log, log[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_a_request_cut_off_by_the_shutdown_grace_gets_a_503_problem(tiny_repo_template: Path,
                                                                    videos: dict[str, Path], tmp_path: Path) -> None:
    """Held 9 s in the batcher with 1 s of grace: uvicorn cancels it; it is answered 503 not-ready and counted and
    logged so, not uvicorn's bare 500 for a request logged as 200."""
    with _serve_held_in_batcher(tiny_repo_template, 9000, 1, tmp_path) as (proc, url):
        with httpx.Client(base_url=url, timeout=60) as http:
            result: dict[str, Any] = {}
            thread = threading.Thread(target=lambda: result.update(
                response=http.post("/classify", content=videos["c"].read_bytes(), headers=MP4)))
            thread.start()
            wait_until(lambda: metric(http.get("/metrics").text, 'tsm_queue_depth{model="tiny"}') == 1.0, 30)
            proc.send_signal(signal.SIGTERM)
            thread.join(timeout=30)
        log = _exit_log(proc)
    response = result["response"]
    assert response.status_code == 503 and response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "not-ready" and "shut down" in response.json()["detail"]
    assert response.headers["retry-after"] == "1"
    assert "status=503 type=not-ready" in log and "status=200" not in log, log[-3000:]
    assert "Exception in ASGI application" not in log, log[-3000:]
