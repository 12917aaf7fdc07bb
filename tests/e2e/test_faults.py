"""Faults: decoder crash / hang / memory blow-up, client disconnects, a full decoder queue, a failed inference."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, pool_healthy
from tests.e2e.helpers import HOLD, HOLD_MAX_S, faulty_decode, metric, wait_until
from tests.e2e.test_errors import assert_problem

pytestmark = pytest.mark.slow
MP4 = {"content-type": "video/mp4"}


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


@pytest.mark.parametrize("path", ["/classify", "/classify/batch"])
def test_client_disconnect_cancels_work(patient_server: LiveServer, videos: dict[str, Path], tmp_path: Path,
                                        path: str) -> None:
    """A client that leaves while its request waits for the (busy) decoder is never decoded for, and is counted
    as gone (499): a batch's was counted as a 503 'the server shut down' (its gather ends with CancelledError as
    its exception, not as cancelled)."""
    live, good = patient_server, videos["c"].read_bytes()
    pool = live.resources.pool
    decodes = 'tsm_stage_duration_seconds_count{stage="decode"}'
    cancelled = 'tsm_cancelled_requests_total{stage="processing"}'
    closed = 'tsm_requests_total{model="tiny",status="499",version="1"}'
    port = int(live.url.rsplit(":", 1)[1])
    body, content_type = good, "video/mp4"
    if path.endswith("batch"):
        body = (b'--B\r\nContent-Disposition: form-data; name="files"; filename="c.mp4"\r\nContent-Type: video/mp4'
                b"\r\n\r\n" + good + b"\r\n--B--\r\n")
        content_type = "multipart/form-data; boundary=B"
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
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
            refused = http.post("/classify", content=good, headers=MP4, timeout=15)  # at once; queued, it waits
        finally:                                                                   # for the held decoder
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
        failed = http.post("/classify", content=videos["c"].read_bytes(), headers=MP4)
        body = assert_problem(failed, 503, "inference-failed")
        metrics = http.get("/metrics").text
        batch = http.post("/classify/batch", files=[("files", ("c.mp4", videos["c"].read_bytes(), "video/mp4"))])
    assert body["retry_after_s"] == int(failed.headers["retry-after"]) >= 1  # the header's wait, in the body too
    # A batch answers 200 whatever its files got: each file's wait is in its problem document, or nowhere.
    item = batch.json()["results"][0]
    assert (batch.status_code, item["status"], item["error"]["type"]) == (200, 503, "inference-failed")
    assert item["error"]["retry_after_s"] == body["retry_after_s"]
    assert metric(metrics, 'tsm_requests_total{model="tiny",status="503",version="1"}') == 1.0
    assert "inference-failed" not in metrics  # the request was admitted: not counted as refused
    durations = [metric(metrics, f'tsm_request_duration_seconds_count{{status_class="{c}"}}') for c in ("2xx", "5xx")]
    assert durations == [0, 1]  # its time is not mixed into the answered requests' latency
    # The server's fault is in its own log, with the cause, not only in the client's answer.
    failed = [r for r in caplog.records if r.name == "service.batcher"]
    assert [(r.levelname, r.getMessage()) for r in failed] == [("ERROR", "tiny version 1: inference failed for a "
                                                                         "batch of 1")] * 2  # the request, the batch
    assert "the device fell over (injected)" in str(failed[0].exc_info[1])
    answer = [r for r in caplog.records if r.name == "service.api.routes" and "status=503" in r.getMessage()]
    assert answer[-1].levelname == "WARNING" and re.search(
        r"status=503 type=inference-failed in [\d.]+ ms: inference failed for a batch of 1: the device fell over "
        r"\(injected\)$", answer[-1].getMessage())
