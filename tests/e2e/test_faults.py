"""Faults: decoder crash / hang / memory blow-up, failing model versions, client disconnects, SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.decode_worker import DecodedClip, decode_task
from tests.conftest import TINY_NAME, LiveServer, export_tiny, free_port, pool_healthy
from tests.e2e.test_errors import assert_problem

pytestmark = pytest.mark.slow
MP4 = {"content-type": "video/mp4"}


HOLD = b"HOLD"
HOLD_MAX_S = 600
"""Longest a held decode waits for its ``go`` file: far beyond need, as the test touches it in a ``finally``."""


def faulty_decode(path: str, *args: Any) -> DecodedClip:
    """The real decode task, unless the upload starts with a fault marker (runs in a decoder worker).

    ``HOLD<folder>\\n`` waits (at most ``HOLD_MAX_S``) until ``<folder>/go`` exists, then fails to decode
    the upload (it is no video): a decoder kept busy for exactly as long as the test wants."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(HOLD):
        go = Path(head[len(HOLD):].split(b"\n", 1)[0].decode()) / "go"
        deadline = time.monotonic() + HOLD_MAX_S
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    if head.startswith(b"CRASH"):
        os.kill(os.getpid(), signal.SIGKILL)
    if head.startswith(b"HANG"):
        time.sleep(60)
    if head.startswith(b"HOG"):
        blob = bytearray(8 << 30)  # 8 GiB: over the worker's address-space cap
        return blob  # type: ignore[return-value]
    return decode_task(path, *args)


def wait_until(condition: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def faulty_server(tiny_repo_template: Path) -> Any:
    overrides = {"model_repo": tiny_repo_template, "decode_workers": 1, "decode_timeout_s": 1.0,
                 "decode_memory_mb": 1024, "poll_interval_s": 0, "cpu_threads": 1, "max_queue_delay_ms": 5}
    with LiveServer(overrides, decode_task=faulty_decode) as live:
        yield live


@pytest.mark.parametrize(("marker", "type_", "reason"), [
    (b"CRASH", "decoder-crashed", "crashed"),
    (b"HANG", "decode-timeout", "timeout"),
    (b"HOG", "video-limit-exceeded", "out_of_memory"),
])
def test_decoder_fault_fails_one_request_and_is_replaced(faulty_server: LiveServer, videos: dict[str, Path],
                                                         marker: bytes, type_: str, reason: str) -> None:
    pool = faulty_server.resources.pool
    before_pids, before_replaced = pool.pids(), pool.replaced
    replacements = f'tsm_decoder_replacements_total{{reason="{reason}"}}'
    with faulty_server.client() as http:
        # The server is shared by the module: count this fault's replacement, not earlier tests' ones.
        replaced_before = metric(http.get("/metrics").text, replacements)
        start = time.monotonic()
        r = http.post("/classify", content=marker + b"\0" * 100, headers=MP4)
        took = time.monotonic() - start
        body = assert_problem(r, 422, type_)
        after = http.post("/classify", content=videos["c"].read_bytes(), headers=MP4)
        metrics = http.get("/metrics").text
    assert after.status_code == 200, after.text
    assert took < 5, took
    assert pool.replaced == before_replaced + 1 and pool.pids() != before_pids and pool_healthy(faulty_server)
    assert metric(metrics, replacements) == replaced_before + 1, metrics
    assert body["detail"]


@pytest.fixture
def patient_server(tiny_repo_template: Path) -> Iterator[LiveServer]:
    """One decoder, which a held decode may keep as long as a test wants (``faulty_server`` times one out at 1 s:
    a decoder held "for a while" there frees at a time the test does not control)."""
    overrides = {"model_repo": tiny_repo_template, "decode_workers": 1, "decode_timeout_s": HOLD_MAX_S,
                 "request_deadline_ms": 2 * HOLD_MAX_S * 1000, "poll_interval_s": 0, "cpu_threads": 1,
                 "max_queue_delay_ms": 5}
    with LiveServer(overrides, decode_task=faulty_decode) as live:
        yield live


def test_client_disconnect_cancels_work(patient_server: LiveServer, videos: dict[str, Path], tmp_path: Path) -> None:
    """A client that leaves while its request waits for the (busy) decoder is never decoded for."""
    live, good = patient_server, videos["c"].read_bytes()
    pool = live.resources.pool
    decodes = 'tsm_stage_duration_seconds_count{stage="decode"}'
    cancelled = 'tsm_cancelled_requests_total{stage="processing"}'
    closed = 'tsm_requests_total{model="tiny",status="499",version="1"}'
    port = int(live.url.rsplit(":", 1)[1])
    request = (f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: video/mp4\r\n"
               f"Content-Length: {len(good)}\r\n\r\n").encode() + good
    with live.client() as http, live.client(timeout=2 * HOLD_MAX_S) as holder, ThreadPoolExecutor(1) as threads:
        before = {name: metric(http.get("/metrics").text, name) for name in (decodes, cancelled, closed)}

        def left() -> bool:
            text = http.get("/metrics").text
            return metric(text, cancelled) == before[cancelled] + 1 and metric(text, closed) == before[closed] + 1

        held = threads.submit(holder.post, "/classify", content=HOLD + str(tmp_path).encode() + b"\n", headers=MP4)
        try:
            wait_until(lambda: bool(pool.busy_pids()), 60)  # the only decoder is taken until ``go``
            # The impatient client sends its video and, once the server has it waiting for the decoder, gives up
            # and closes its connection (a raw socket: it leaves at that point, not after a guessed timeout).
            with socket.create_connection(("127.0.0.1", port), timeout=60) as impatient:
                impatient.sendall(request)
                wait_until(lambda: pool.waiting == 1, 60)
                queued = http.get("/metrics").text
            wait_until(left, 60)  # cancelled while the decoder was still held
        finally:
            (tmp_path / "go").touch()
        assert_problem(held.result(timeout=2 * HOLD_MAX_S), 422, "undecodable-video")  # its upload is no video
        metrics = http.get("/metrics").text
        assert http.post("/classify", content=good, headers=MP4).status_code == 200
    assert metric(metrics, decodes) == before[decodes]  # no decode: the held one failed, the impatient one never ran
    assert metric(metrics, cancelled) == before[cancelled] + 1
    assert metric(metrics, closed) == before[closed] + 1
    assert "client-closed-request" not in metrics  # a client gone is cancelled, not refused
    decoding = ("tsm_decoders_busy", "tsm_decode_waiting")
    assert [metric(queued, m) for m in decoding] == [1, 1] and [metric(metrics, m) for m in decoding] == [0, 0]


def test_a_full_decoder_queue_refuses_at_once_under_the_model_it_was_for(tiny_repo_template: Path,
                                                                         videos: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    """One decoder, held; one request waits for it; a third is refused before its upload is read."""
    overrides = {"model_repo": tiny_repo_template, "decode_workers": 1, "decode_queue_capacity": 1,
                 "decode_timeout_s": HOLD_MAX_S, "request_deadline_ms": 2 * HOLD_MAX_S * 1000, "poll_interval_s": 0,
                 "cpu_threads": 1, "max_queue_delay_ms": 5}
    good = videos["c"].read_bytes()
    with LiveServer(overrides, decode_task=faulty_decode) as live, live.client(timeout=2 * HOLD_MAX_S) as http, \
            ThreadPoolExecutor(2) as threads:
        pool = live.resources.pool
        held = threads.submit(http.post, "/classify", content=HOLD + str(tmp_path).encode() + b"\n", headers=MP4)
        try:
            wait_until(lambda: bool(pool.busy_pids()), 60)
            waiting = threads.submit(http.post, "/classify", content=good, headers=MP4)
            wait_until(lambda: pool.waiting == 1, 60)
            refused = http.post("/classify", content=good, headers=MP4)
        finally:
            (tmp_path / "go").touch()
        assert waiting.result(timeout=60).status_code == 200 and held.result(timeout=60).status_code == 422
        metrics = http.get("/metrics").text
    body = assert_problem(refused, 503, "queue-full")
    assert refused.headers["retry-after"] == "1"
    assert body["detail"] == "1 video is already waiting for a decoder; retry shortly"
    assert metric(metrics, 'tsm_requests_total{model="tiny",status="503",version="1"}') == 1.0
    assert metric(metrics, 'tsm_rejected_requests_total{reason="queue-full"}') == 1.0


class BrokenInference:
    """The real predictor for loading and warm-up; every inference call after that fails."""

    def __init__(self, settings: Any) -> None:
        from service.backends import default_factory

        self.inner = default_factory(settings)

    def __call__(self, version_dir: Path, manifest: Any) -> Any:
        predictor = self.inner(version_dir, manifest)
        warm_up = predictor.warm_up

        def warm_up_then_break(*args: Any) -> int:
            outputs = warm_up(*args)

            def broken(*_: Any) -> Any:
                raise RuntimeError("the device fell over (injected)")
            predictor.run = broken  # the batcher takes predictor.run after warm-up
            return outputs
        predictor.warm_up = warm_up_then_break
        return predictor


def test_failed_inference_is_503_not_a_refusal(tiny_repo_template: Path, videos: dict[str, Path],
                                               caplog: pytest.LogCaptureFixture) -> None:
    from service.settings import ServiceSettings

    overrides = {"model_repo": tiny_repo_template, "decode_workers": 1, "cpu_threads": 1, "poll_interval_s": 0,
                 "max_queue_delay_ms": 5}
    with LiveServer(overrides, predictor_factory=BrokenInference(ServiceSettings(**overrides))) as live, \
            live.client() as http:
        assert_problem(http.post("/classify", content=videos["c"].read_bytes(), headers=MP4), 503, "inference-failed")
        metrics = http.get("/metrics").text
    assert metric(metrics, 'tsm_requests_total{model="tiny",status="503",version="1"}') == 1.0
    assert "inference-failed" not in metrics  # the request was admitted: not counted as refused
    durations = [metric(metrics, f'tsm_request_duration_seconds_count{{status_class="{c}"}}') for c in ("2xx", "5xx")]
    assert durations == [0, 1]  # its time is not mixed into the answered requests' latency
    # The server's fault is in its own log, with the cause, not only in the client's answer.
    failed = [r for r in caplog.records if r.name == "service.batcher"]
    assert [(r.levelname, r.getMessage()) for r in failed] == [("ERROR", "tiny version 1: inference failed for a "
                                                                         "batch of 1")]
    assert "the device fell over (injected)" in str(failed[0].exc_info[1])
    answer = [r for r in caplog.records if r.name == "service.api.routes"]
    assert answer[-1].levelname == "WARNING" and re.search(
        r"status=503 type=inference-failed in [\d.]+ ms: inference failed for a batch of 1: the device fell over "
        r"\(injected\)$", answer[-1].getMessage())


class FailingWarmup:
    """Wraps the real predictor factory; versions in ``fail`` raise during warm-up."""

    def __init__(self, settings: Any, fail: set[int]) -> None:
        from service.backends import default_factory

        self.inner, self.fail = default_factory(settings), fail

    def __call__(self, version_dir: Path, manifest: Any) -> Any:
        predictor = self.inner(version_dir, manifest)
        if int(version_dir.name) in self.fail:
            def broken(*_: Any) -> int:
                raise RuntimeError("warm-up failed (injected)")
            predictor.warm_up = broken
        return predictor


def test_failing_new_versions_keep_the_old_one_serving(model_repo: Path, videos: dict[str, Path]) -> None:
    """v2 fails warm-up, v3 is half-written, an exporter's staging folder lies around: v1 serves throughout."""
    from service.settings import ServiceSettings

    overrides = {"model_repo": model_repo, "poll_interval_s": 0.2, "decode_workers": 1, "cpu_threads": 1}
    factory = FailingWarmup(ServiceSettings(**overrides), fail={2})
    good = videos["c"].read_bytes()
    with LiveServer(overrides, predictor_factory=factory) as live, live.client() as http:
        assert http.post("/classify", content=good, headers=MP4).json()["version"] == 1
        export_tiny(model_repo, seed=3)  # -> tiny/2, which fails warm-up
        half = model_repo / TINY_NAME / ".copying-3"
        half.mkdir()
        (half / "model.pdmodel").write_bytes(b"\0" * 10)  # no manifest, no params: a copy stuck half way
        half.rename(model_repo / TINY_NAME / "3")  # in one step: changing files would make it be tried again
        staging = model_repo / TINY_NAME / ".stage-interrupted"
        staging.mkdir()
        (staging / "model.pdiparams").write_bytes(b"\0" * 10)
        deadline = time.monotonic() + 30
        statuses = []
        while time.monotonic() < deadline:
            statuses.append(http.post("/classify", content=good, headers=MP4).json().get("version"))
            states = {m["version"]: m["state"] for m in http.get(f"/models/{TINY_NAME}").json()["models"]}
            if states == {1: "ready", 2: "failed", 3: "failed"}:
                break
        assert states == {1: "ready", 2: "failed", 3: "failed"}, states
        assert set(statuses) == {1}
        assert http.get("/readyz").status_code == 200
        models = {m["version"]: m for m in http.get(f"/models/{TINY_NAME}").json()["models"]}
        assert "warm-up failed" in models[2]["error"]
        metrics = http.get("/metrics").text
    assert metric(metrics, 'tsm_model_loads_total{model="tiny",result="failed"}') == 2.0


def test_a_failed_version_is_tried_again_once_its_files_change(model_repo: Path, videos: dict[str, Path]) -> None:
    """v2 fails its warm-up; the cause goes away but nothing retries it until its files change (the default
    back-off is 30 s), then the next scan loads it and it serves."""
    from service.settings import ServiceSettings

    overrides = {"model_repo": model_repo, "poll_interval_s": 0.2, "decode_workers": 1, "cpu_threads": 1}
    factory = FailingWarmup(ServiceSettings(**overrides), fail={2})
    good = videos["c"].read_bytes()
    with LiveServer(overrides, predictor_factory=factory) as live, live.client() as http:
        export_tiny(model_repo, seed=3)
        def version_state() -> dict[int, str]:
            return {m["version"]: m["state"] for m in http.get(f"/models/{TINY_NAME}").json()["models"]}

        wait_until(lambda: version_state().get(2) == "failed", 30)
        factory.fail.clear()
        time.sleep(1.0)  # five scans
        assert version_state() == {1: "ready", 2: "failed"}
        manifest = model_repo / TINY_NAME / "2" / "manifest.json"
        # The copy is written again, seen as a newer mtime (what the scan compares, with the size). Set in one
        # step: a rewrite truncates first, and a scan that read it empty would fail the version once more.
        stat = manifest.stat()
        os.utime(manifest, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        wait_until(lambda: http.post("/classify", content=good, headers=MP4).json().get("version") == 2, 30)
        metrics = http.get("/metrics").text
    assert metric(metrics, 'tsm_model_loads_total{model="tiny",result="failed"}') == 1.0
    assert metric(metrics, 'tsm_model_loads_total{model="tiny",result="ok"}') == 2.0


def test_a_failed_version_is_tried_again_after_the_back_off(model_repo: Path) -> None:
    """Straight on the repository: no retry before ``retry_failed_s``, a retry after it, the wait doubling."""
    import asyncio

    from service.batcher import BatchPolicy
    from service.metrics import Metrics
    from service.repository import ModelRepository
    from service.settings import ServiceSettings

    factory = FailingWarmup(ServiceSettings(model_repo=model_repo, cpu_threads=1), fail={1})

    async def scenario() -> list[str]:
        repo = ModelRepository(model_repo, Metrics(process=False), factory, BatchPolicy(2, 5, 8),
                               warmup_runs=1, retry_failed_s=0.5)
        seen = []
        await repo.start()  # attempt 1 fails
        await repo.poll_once()  # too early: not tried
        seen.append(repo.describe()[0]["state"])
        await asyncio.sleep(0.6)
        await repo.poll_once()  # attempt 2 fails: the next wait is 1 s
        await asyncio.sleep(0.6)
        await repo.poll_once()  # too early again
        seen.append(f"{repo.describe()[0]['state']} after {repo.others[(TINY_NAME, 1)].failures}")
        factory.fail.clear()
        await asyncio.sleep(0.5)
        await repo.poll_once()  # attempt 3 loads
        seen.append(repo.describe()[0]["state"])
        await repo.close()
        return seen

    assert asyncio.run(scenario()) == ["failed", "failed after 2", "ready"]


def test_a_copy_that_completes_during_a_failed_load_is_tried_again(model_repo: Path) -> None:
    """The load saw half a copy and failed; the copy finished meanwhile: the next scan tries again at once (no
    30 s back-off). Then the version's folder is deleted: the model is unknown again (404), not "not ready"."""
    import asyncio
    import shutil

    from service.batcher import BatchPolicy
    from service.errors import ModelNotFoundError
    from service.metrics import Metrics
    from service.repository import ModelRepository
    from service.settings import ServiceSettings

    inner = FailingWarmup(ServiceSettings(model_repo=model_repo, cpu_threads=1), fail=set())
    attempts = []

    def factory(version_dir: Path, manifest: Any) -> Any:
        predictor = inner(version_dir, manifest)
        attempts.append(version_dir)
        if len(attempts) == 1:
            (version_dir / "labels.txt").write_text((version_dir / "labels.txt").read_text())  # the copy lands

            def broken(*_: Any) -> int:
                raise RuntimeError("half a copy (injected)")
            predictor.warm_up = broken
        return predictor

    async def scenario() -> tuple[str, str]:
        repo = ModelRepository(model_repo, Metrics(process=False), factory, BatchPolicy(2, 5, 8), warmup_runs=1,
                               retry_failed_s=100)
        await repo.start()
        first = repo.describe()[0]["state"]
        await repo.poll_once()
        second = repo.describe()[0]["state"]
        await repo.close()
        return first, second

    assert asyncio.run(scenario()) == ("failed", "ready")

    async def deleted() -> None:
        inner.fail.add(1)
        repo = ModelRepository(model_repo, Metrics(process=False), inner, BatchPolicy(2, 5, 8), warmup_runs=1)
        await repo.start()
        shutil.rmtree(model_repo / TINY_NAME / "1")
        await repo.poll_once()
        with pytest.raises(ModelNotFoundError):
            repo.resolve(TINY_NAME, None)
        await repo.close()

    asyncio.run(deleted())


@contextmanager
def _serve_held_in_batcher(repo: Path, delay_ms: int, grace_s: float) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A ``tsm-serve`` process whose requests wait ``delay_ms`` in the batcher, ready to serve; killed on the way
    out if it is still running."""
    port = free_port()
    env = {**os.environ, "TSM_MODEL_REPO": str(repo), "TSM_PORT": str(port),
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
    """The stderr of a server told to stop, once it has exited as uvicorn does after a graceful shutdown (which
    re-raises the SIGTERM it caught)."""
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    _, stderr = proc.communicate(timeout=5)
    return stderr.decode()


def test_sigterm_finishes_in_flight_then_exits(tiny_repo_template: Path, videos: dict[str, Path]) -> None:
    """SIGTERM: the listener closes, the in-flight request (held 4 s in the batcher) still gets 200, exit 0."""
    # A 4 s batching window: the signal, and the listener closing, come well before it ends, on any machine.
    with _serve_held_in_batcher(tiny_repo_template, 4000, 20) as (proc, url):
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


def test_a_request_cut_off_by_the_shutdown_grace_gets_a_503_problem(tiny_repo_template: Path,
                                                                    videos: dict[str, Path]) -> None:
    """Held 9 s in the batcher with 1 s of grace: uvicorn cancels it; it is answered 503 not-ready and counted and
    logged so, not uvicorn's bare 500 for a request logged as 200."""
    with _serve_held_in_batcher(tiny_repo_template, 9000, 1) as (proc, url):
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
