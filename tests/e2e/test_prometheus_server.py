"""A real Prometheus scrapes a live server with the project's own scrape job, rules and dashboard queries.

Debian's ``prometheus`` binary runs on loopback only, with docker/prometheus/prometheus.yml's ``tsm-api`` job
(same name and metrics path; interval shortened, Docker DNS discovery swapped for the live test server) and
docker/prometheus/alerts.yml. Every Grafana dashboard query must then evaluate on the scraped data.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import LiveServer, free_port

pytestmark = pytest.mark.slow

DOCKER = Path(__file__).resolve().parents[2] / "docker"
DEADLINE_S = 60.0
# Queries the dashboard must answer with data once the service has handled a few requests.
MUST_HAVE_DATA = ("tsm_requests_total", "tsm_request_duration_seconds_bucket", "tsm_stage_duration_seconds_bucket",
                  "tsm_model_info", "tsm_queue_depth", "tsm_decode_waiting", "up{")


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if found is None:
        pytest.fail("prometheus is missing: apt-get install -y prometheus (./run.sh test installs it)")
    return found


def scrape_config_for(target: str) -> dict[str, Any]:
    """The project's config with its tsm-api job pointed at ``target`` (and nothing else scraped)."""
    project = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in project["scrape_configs"] if j["job_name"] == "tsm-api")
    job = {k: v for k, v in job.items() if not k.endswith("_sd_configs")}
    job.update(scrape_interval="1s", scrape_timeout="1s", static_configs=[{"targets": [target]}])
    return {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(DOCKER / "prometheus" / rule) for rule in project["rule_files"]],
            "scrape_configs": [job]}


@pytest.fixture
def prometheus(server: LiveServer, tmp_path: Path) -> Iterator[httpx.Client]:
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config_for(server.url.removeprefix("http://"))))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [prometheus_binary(), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            wait_for(lambda: client.get("/-/ready").status_code == 200 if proc.poll() is None else fail_start(proc),
                     "Prometheus ready", time.monotonic() + 20, tmp_path / "prometheus.log")
            yield client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def fail_start(proc: subprocess.Popen[bytes]) -> bool:
    raise AssertionError(f"prometheus exited with {proc.returncode}")


def wait_for(check: Callable[[], Any], what: str, deadline: float, log: Path | None = None) -> Any:
    while True:
        try:
            result = check()
        except httpx.TransportError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            detail = log.read_text()[-2000:] if log and log.exists() else ""
            raise AssertionError(f"timed out waiting for {what}\n{detail}")
        time.sleep(0.25)


def query(client: httpx.Client, expr: str) -> list[dict[str, Any]]:
    body = client.get("/api/v1/query", params={"query": expr}).json()
    assert body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def test_prometheus_scrapes_the_service(prometheus: httpx.Client, server: LiveServer,
                                        videos: dict[str, Path]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    with server.client() as http:
        for _ in range(3):
            r = http.post("/classify", content=videos["c"].read_bytes(), headers={"content-type": "video/mp4"})
            assert r.status_code == 200, r.text
        assert http.post("/classify", content=b"x" * 2048, headers={"content-type": "text/plain"}).status_code == 415

    def target_up() -> dict[str, Any] | None:
        targets = prometheus.get("/api/v1/targets").json()["data"]["activeTargets"]
        return next((t for t in targets if t["labels"]["job"] == "tsm-api" and t["health"] == "up"), None)

    target = wait_for(target_up, "the tsm-api target to be up", deadline)
    assert target["scrapeUrl"] == f"{server.url}/metrics"

    def scraped() -> bool:
        ok = query(prometheus, 'sum(tsm_requests_total{job="tsm-api", status="200"})')
        stages = query(prometheus, 'tsm_stage_duration_seconds_count{job="tsm-api", stage="inference"}')
        return bool(ok and float(ok[0]["value"][1]) >= 3 and stages and float(stages[0]["value"][1]) >= 3)

    wait_for(scraped, "tsm_requests_total and tsm_stage_duration_seconds_count samples", deadline)
    # rate() needs two samples inside its window: wait for a couple more scrapes
    wait_for(lambda: query(prometheus, 'count_over_time(up{job="tsm-api"}[1m]) >= 3'), "three scrapes", deadline)

    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "tsm-serving.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    for expr in exprs:  # Grafana's $__rate_interval, as a fixed window
        result = query(prometheus, expr.replace("$__rate_interval", "1m"))
        if any(name in expr for name in MUST_HAVE_DATA) and "status=~" not in expr:
            assert result, f"dashboard query returned no data: {expr}"
    statuses = {s["metric"]["status"] for s in query(prometheus, "sum by (status) (tsm_requests_total)")}
    assert {"200", "415"} <= statuses

    def rules_evaluated() -> list[dict[str, Any]] | None:
        groups = prometheus.get("/api/v1/rules").json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules) else None

    rules = wait_for(rules_evaluated, "the alert rules to be evaluated", deadline)
    assert {r["name"] for r in rules} == {"TsmReplicaDown", "TsmNoReplicaUp", "TsmNoModelLoaded", "TsmHighErrorRate",
                                          "TsmHighLatencyP99", "TsmQueueBacklog", "TsmDecodeBacklog"}
    assert all(r["health"] == "ok" for r in rules), rules
    # the live replica is up and serves a model: neither paging alert is even pending
    firing = {a["labels"]["alertname"] for a in prometheus.get("/api/v1/alerts").json()["data"]["alerts"]}
    assert not firing & {"TsmReplicaDown", "TsmNoReplicaUp", "TsmNoModelLoaded"}, firing
