"""/metrics is valid Prometheus text (promtool), stage histograms move, concurrent clips are batched."""

from __future__ import annotations

import concurrent.futures
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import LiveServer

pytestmark = pytest.mark.slow


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def counter(text: str, name: str, **labels: str) -> float:
    """One sample's value, 0 when the series is absent (a counter nothing has incremented yet)."""
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def stage_count(text: str, stage: str) -> float:
    return samples(text)[("tsm_stage_duration_seconds_count", (("stage", stage),))]


def gauge(text: str, name: str, **labels: str) -> float:
    """One gauge sample's value; fails when the series is not exported."""
    key = (name, tuple(sorted(labels.items())))
    values = samples(text)
    assert key in values, f"{name}{labels} is not exported"
    return values[key]


def test_metrics_valid_and_moving(server: LiveServer, videos: dict[str, Path]) -> None:
    video = videos["c"].read_bytes()
    with server.client() as http:
        before = http.get("/metrics").text
        r = http.post("/classify", content=video, headers={"content-type": "video/mp4"})
        assert r.status_code == 200
        after = http.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    for stage in ("upload", "decode", "queue", "inference", "postprocess"):
        assert stage_count(after.text, stage) == stage_count(before, stage) + 1, stage
    s = samples(after.text)
    assert s[("tsm_model_info", (("backend", "paddle"), ("device", "cpu"), ("model", "tiny"),
                                 ("precision", "fp32"), ("version", "1")))] == 1
    assert s[("tsm_model_loads_total", (("model", "tiny"), ("result", "ok")))] == 1

    def delta(name: str, **labels: str) -> float:
        return counter(after.text, name, **labels) - counter(before, name, **labels)

    # One request moves each of its series by exactly one (the server is shared: compare with before).
    assert delta("tsm_requests_total", model="tiny", version="1", status="200") == 1
    assert delta("tsm_request_duration_seconds_count", status_class="2xx") == 1
    assert delta("tsm_request_duration_seconds_count", status_class="5xx") == 0
    assert delta("tsm_upload_bytes_count") == 1 and delta("tsm_upload_bytes_sum") == len(video)
    assert delta("tsm_batch_size_count") == 1 and delta("tsm_batch_size_sum") == 1  # alone in its batch
    inflight_before, inflight_after = gauge(before, "tsm_inflight_requests"), gauge(after.text, "tsm_inflight_requests")
    assert (inflight_before, inflight_after) == (0, 0)  # back to 0 once the request is answered
    assert gauge(after.text, "tsm_queue_depth", model="tiny") == 0
    assert any(name.startswith("process_") for name, _ in s)
    assert not [name for name, _ in s if name.endswith("_created")]  # no timestamp series beside each counter
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: apt-get install -y prometheus (./run.sh test installs it)")
    check = subprocess.run([promtool, "check", "metrics"], input=after.content, capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def test_queue_depth_shows_a_clip_waiting_for_its_batch(tiny_repo_template: Path, videos: dict[str, Path]) -> None:
    """A lone clip waits out max_queue_delay_ms for company (batches of up to 4): meanwhile /metrics shows it
    queued and in flight; once it is answered both gauges are back to 0."""
    overrides = {"model_repo": tiny_repo_template, "max_batch_size": 4, "max_queue_delay_ms": 3000,
                 "decode_workers": 1, "cpu_threads": 1, "poll_interval_s": 0}
    with LiveServer(overrides) as live, live.client() as http, concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert gauge(http.get("/metrics").text, "tsm_queue_depth", model="tiny") == 0  # exported from the load on
        pending = pool.submit(http.post, "/classify", content=videos["c"].read_bytes(),
                              headers={"content-type": "video/mp4"})
        deadline = time.monotonic() + 30
        while counter(text := http.get("/metrics").text, "tsm_queue_depth", model="tiny") == 0:
            assert not pending.done(), f"answered before it was seen queued: {pending.result().text}"
            assert time.monotonic() < deadline, "the clip never showed in tsm_queue_depth"
            time.sleep(0.02)
        waiting = text
        r = pending.result(timeout=30)
        after = http.get("/metrics").text
    assert r.status_code == 200, r.text
    assert r.json()["batch_size"] == 1 and r.json()["timings_ms"]["queue"] >= 2900  # it waited out the window
    while_waiting = (gauge(waiting, "tsm_queue_depth", model="tiny"), gauge(waiting, "tsm_inflight_requests"))
    once_answered = (gauge(after, "tsm_queue_depth", model="tiny"), gauge(after, "tsm_inflight_requests"))
    assert (while_waiting, once_answered) == ((1, 1), (0, 0))


def test_concurrent_requests_are_batched(tiny_repo_template: Path, videos: dict[str, Path]) -> None:
    overrides = {"model_repo": tiny_repo_template, "max_batch_size": 4, "max_queue_delay_ms": 1500,
                 "decode_workers": 2}
    data = [videos[k].read_bytes() for k in ("a", "b", "c", "a")]
    with LiveServer(overrides) as live, live.client() as http, concurrent.futures.ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda d: http.post("/classify", content=d, headers={"content-type": "video/mp4"}),
                                  data))
        text = http.get("/metrics").text
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert max(r.json()["batch_size"] for r in responses) > 1
    s = samples(text)
    batches = s[("tsm_batch_size_count", ())]
    assert s[("tsm_batch_size_sum", ())] == 4 and batches < 4  # 4 clips in fewer inference calls
    assert s[("tsm_batch_size_bucket", (("le", "1.0"),))] < batches
