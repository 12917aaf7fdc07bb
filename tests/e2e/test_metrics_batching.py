"""/metrics is valid Prometheus text (promtool), stage histograms move, concurrent clips are batched."""

from __future__ import annotations

import concurrent.futures
import shutil
import subprocess
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


def test_metrics_valid_and_moving(server: LiveServer, videos: dict[str, Path]) -> None:
    with server.client() as http:
        before = http.get("/metrics").text
        r = http.post("/classify", content=videos["c"].read_bytes(), headers={"content-type": "video/mp4"})
        assert r.status_code == 200
        after = http.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    for stage in ("upload", "decode", "queue", "inference", "postprocess"):
        assert stage_count(after.text, stage) == stage_count(before, stage) + 1, stage
    s = samples(after.text)
    assert s[("tsm_model_info", (("backend", "paddle"), ("device", "cpu"), ("model", "tiny"),
                                 ("precision", "fp32"), ("version", "1")))] == 1
    assert s[("tsm_model_loads_total", (("model", "tiny"), ("result", "ok")))] == 1
    assert s[("tsm_requests_total", (("model", "tiny"), ("status", "200"), ("version", "1")))] >= 1
    assert s[("tsm_upload_bytes_count", ())] >= 1 and s[("tsm_batch_size_count", ())] >= 1
    assert ("tsm_inflight_requests", ()) in s and ("tsm_queue_depth", (("model", "tiny"),)) in s
    assert any(name.startswith("process_") for name, _ in s)
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool missing: apt-get install -y prometheus (./run.sh test installs it)")
    check = subprocess.run([promtool, "check", "metrics"], input=after.content, capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


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
